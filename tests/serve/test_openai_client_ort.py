"""The same official-``openai``-client tests as ``test_openai_client``, against SmolLM2 as int4 ONNX run
by ONNX Runtime GenAI: the Edge server does not know which engine it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegen.serve import BackgroundServer
from tests.serve.kit import running
from tests.serve.test_openai_client import (  # noqa: F401  (collected here, run against the ONNX server)
    test_chat_non_streaming,
    test_chat_streaming_matches_non_streaming,
    test_completion_stop_string_is_honoured,
    test_completion_streaming_and_not,
    test_list_models,
    test_missing_key_is_401_but_health_is_open,
    test_seeded_sampling_is_reproducible,
    test_wrong_key_raises_authentication_error,
)
from tests.serve.test_openai_client_features import (  # noqa: F401,E402  (constrained decoding: llguidance)
    test_named_tool_choice_forces_that_tool,
    test_parse_with_pydantic_schema,
    test_tool_call_not_streamed,
    test_tool_call_streamed_matches_not_streamed,
)
from tests.serve.test_structured import test_json_object_reply_is_an_object, test_json_schema_replies_validate  # noqa: F401,E402,E501

pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def smol_server(smollm2_onnx_int4: Path) -> Iterator[BackgroundServer]:
    """Overrides the GGUF server of ``conftest``: same model id, context and key, ONNX engine."""
    with running(smollm2_onnx_int4, n_ctx=512, model_id="smollm2") as srv:
        yield srv


def test_the_server_runs_the_onnx_engine(smol_server: BackgroundServer) -> None:
    assert type(smol_server.app.state.server.slot.engine).__name__ == "OrtEngine"


def test_constrained_output_on_a_tiny_onnx_model(tiny_onnx: Path) -> None:
    """Not slow: a random 2-layer model, so only the constraint can make its replies parse (tool calls on
    ONNX run in the slow SmolLM2 tests above: this model's 256-token context cannot hold the tool prompt)."""
    import json

    import httpx
    import jsonschema

    from tests.serve.kit import AUTH
    from tests.serve.test_structured import SCHEMAS

    schema = SCHEMAS["nested"]
    with running(tiny_onnx, n_ctx=256, model_id="tiny") as srv:
        for seed in range(3):
            r = httpx.post(srv.url + "/v1/chat/completions", headers=AUTH, timeout=60, json={
                "messages": [{"role": "user", "content": "Capital?"}], "seed": seed, "max_tokens": 120,
                "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
            assert r.status_code == 200, r.text
            jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)
