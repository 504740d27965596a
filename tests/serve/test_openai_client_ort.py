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

pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def smol_server(smollm2_onnx_int4: Path) -> Iterator[BackgroundServer]:
    """Overrides the GGUF server of ``conftest``: same model id, context and key, ONNX engine."""
    with running(smollm2_onnx_int4, n_ctx=512, model_id="smollm2") as srv:
        yield srv


def test_the_server_runs_the_onnx_engine(smol_server: BackgroundServer) -> None:
    assert type(smol_server.app.state.server.slot.engine).__name__ == "OrtEngine"
