"""A client that disconnects stops its generation: streaming (the SSE reader goes away) and not
(the client times out while waiting for the JSON answer)."""

from __future__ import annotations

import httpx
import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import AUTH, COUNTING, metric, metrics, wait_until

MAX_TOKENS = 300  # ~6-20 s of counting on SmolLM2 here; a disconnect must end it long before that


def _idle(url: str) -> bool:
    m = metrics(url)
    return metric(m, "edgegen_scheduler_running") == 0 and metric(m, "edgegen_scheduler_queue_depth") == 0


def _output_tokens(url: str) -> float:
    return metric(metrics(url), "gen_ai_client_token_usage_sum", gen_ai_token_type="output")


def _cancelled(url: str) -> float:
    return metric(metrics(url), "edgegen_generations_cancelled_total")


def test_streaming_client_disconnect_stops_generation(smol_server: BackgroundServer) -> None:
    url = smol_server.url
    wait_until(lambda: _idle(url), what="idle server")
    tokens0, cancelled0 = _output_tokens(url), _cancelled(url)
    body = {"model": "m", "prompt": COUNTING, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # leaving the block closes the connection mid-stream
    wait_until(lambda: _idle(url), timeout_s=30, what="generation stopped")
    assert _cancelled(url) - cancelled0 == 1
    generated = _output_tokens(url) - tokens0
    assert 3 <= generated < MAX_TOKENS / 2, generated


def test_non_streaming_client_disconnect_stops_generation(smol_server: BackgroundServer) -> None:
    url = smol_server.url
    wait_until(lambda: _idle(url), what="idle server")
    tokens0, cancelled0 = _output_tokens(url), _cancelled(url)
    body = {"model": "m", "prompt": COUNTING, "max_tokens": MAX_TOKENS, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=httpx.Timeout(60, read=0.5))
    wait_until(lambda: _idle(url), timeout_s=30, what="generation stopped")
    assert _cancelled(url) - cancelled0 == 1
    assert _output_tokens(url) - tokens0 < MAX_TOKENS / 2
