"""Pure pieces of the server: Prometheus exposition, API keys, request -> sampling parameters,
request validation and the streaming chunk format."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from edgegen.runtime.engine import SamplingParams
from edgegen.serve.auth import ApiKeys, bearer_token
from edgegen.serve.metrics import ServerMetrics
from edgegen.serve.protocol import ChunkWriter, error_body, sampling_params
from edgegen.serve.schemas import ChatCompletionRequest, CompletionRequest


def _families(text: str) -> dict[str, object]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def test_histogram_buckets_are_cumulative_and_exposed() -> None:
    m = ServerMetrics(queue_depth=lambda: 0, running=lambda: 0, ready=lambda: 1)
    for v in (0.005, 0.5, 0.5, 50.0):
        m.ttft.observe(v, gen_ai_operation_name="chat")
    fam = _families(m.render())["gen_ai_server_time_to_first_token_seconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.samples}  # type: ignore[attr-defined]
    assert samples[("gen_ai_server_time_to_first_token_seconds_bucket", "0.005")] == 1
    assert samples[("gen_ai_server_time_to_first_token_seconds_bucket", "0.5")] == 3
    assert samples[("gen_ai_server_time_to_first_token_seconds_bucket", "+Inf")] == 4
    assert math.isclose(samples[("gen_ai_server_time_to_first_token_seconds_sum", None)], 51.005)


def test_counter_rules_and_label_escaping() -> None:
    m = ServerMetrics(queue_depth=lambda: 0, running=lambda: 0, ready=lambda: 1)
    weird = 'we"ird\\path\n'
    m.requests.inc(endpoint=weird, status="200", route="local")
    (sample,) = _families(m.render())["edgegen_requests"].samples[:1]  # type: ignore[attr-defined]
    assert sample.labels == {"endpoint": weird, "status": "200", "route": "local"} and sample.value == 1
    with pytest.raises(ValueError):
        m.forwards.inc(-1, reason="x")
    with pytest.raises(ValueError):
        m.forwards.inc(other="x")


def test_two_servers_in_one_process_keep_their_own_metrics() -> None:
    """One CollectorRegistry per server: the same names register twice without a clash."""
    a = ServerMetrics(queue_depth=lambda: 1, running=lambda: 0, ready=lambda: 1)
    b = ServerMetrics(queue_depth=lambda: 5, running=lambda: 1, ready=lambda: 0)
    a.forwards.inc(reason="queue_full")
    assert a.forwards.value(reason="queue_full") == 1 and b.forwards.value(reason="queue_full") == 0
    fa, fb = _families(a.render()), _families(b.render())
    assert fa["edgegen_scheduler_queue_depth"].samples[0].value == 1  # type: ignore[attr-defined]
    assert fb["edgegen_scheduler_queue_depth"].samples[0].value == 5  # type: ignore[attr-defined]


def test_server_metrics_render_has_the_otel_names() -> None:
    m = ServerMetrics(queue_depth=lambda: 3, running=lambda: 1, ready=lambda: 1)
    text = m.render()
    for name in ("gen_ai_server_request_duration_seconds", "gen_ai_server_time_to_first_token_seconds",
                 "gen_ai_server_time_per_output_token_seconds", "gen_ai_client_token_usage",
                 "edgegen_requests_total", "edgegen_scheduler_queue_depth"):
        assert f"# TYPE {name} " in text
    assert "edgegen_scheduler_queue_depth 3.0\n" in text and text.endswith("\n")


def test_api_keys() -> None:
    keys = ApiKeys(["alpha", "beta"])
    assert keys.allows("Bearer beta") and keys.allows("bearer alpha")
    assert not keys.allows("Bearer gamma") and not keys.allows(None) and not keys.allows("Basic alpha")
    assert not keys.allows("Bearer alph") and not keys.allows("Bearer ")
    assert ApiKeys([]).allows(None) and not ApiKeys([]).enabled
    assert bearer_token("Bearer  tok ") == "tok" and bearer_token("tok") is None


def _chat(**kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_sampling_params_mapping() -> None:
    base = SamplingParams()
    p = sampling_params(_chat(temperature=0, max_tokens=10_000, stop="END", seed=-1), n_ctx=512, base=base)
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.0, 1, 1.0, 0.0)  # greedy
    assert p.max_tokens == 512 and p.stop == ("END",) and p.seed == 0xFFFFFFFF
    p = sampling_params(_chat(max_completion_tokens=7, max_tokens=99, top_p=0.5), n_ctx=512, base=base)
    assert p.max_tokens == 7 and p.top_p == 0.5 and p.temperature == base.temperature
    p = sampling_params(CompletionRequest(model="m", prompt="x"), n_ctx=512, base=base)
    assert p.max_tokens == 16  # OpenAI's completions default


@pytest.mark.parametrize("body", [
    {"model": "m", "prompt": ["a", "b"]},
    {"model": "m", "prompt": "x", "n": 9},
    {"model": "m", "prompt": "x", "logprobs": 6},
    {"model": "m", "prompt": "x", "stop": ["s"] * 17},
    {"model": "m", "prompt": "x", "temperature": -0.1},
])
def test_invalid_requests_are_rejected(body: dict) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate(body)


def test_one_element_prompt_lists_and_text_parts_are_accepted() -> None:
    assert CompletionRequest(model="m", prompt=["only"]).single_prompt() == "only"
    assert CompletionRequest(model="m", prompt=[[1, 2]]).single_prompt() == [1, 2]
    msg = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert msg.messages[0].text() == "ab"


def test_chunk_writer_frames_openai_chunks() -> None:
    w = ChunkWriter(chat=True, model="m")
    events = [json.loads(e[len(b"data: "):]) for e in (w.role(), w.text("Hi"), w.finish("stop"), w.usage(3, 1))]
    assert all(e["id"] == w.id and e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"] == {"content": "Hi"}
    assert events[2]["choices"][0]["finish_reason"] == "stop"
    assert events[3]["choices"] == [] and events[3]["usage"]["total_tokens"] == 4
    assert error_body(503, "busy", code="queue_full")["error"]["type"] == "service_unavailable"
