"""An ONNX Runtime GenAI folder through the fleet: published as one signed canonical tar, installed
A/B by the agent (full and delta transfers), health-checked through the ONNX engine, verified at rest
by re-packing, refused when tampered with or when the device seals models at rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from agent_kit import HostileTransport, make_agent, refusals

from edgegen.agent.agent import Agent, AgentConfig, active_model
from edgegen.agent.health import HealthPolicy
from edgegen.agent.slots import Slots
from edgegen.formats.folder_pack import packed_sha256
from edgegen.runtime.base import open_engine
from edgegen.runtime.engine import SamplingParams

pytest.importorskip("onnxruntime_genai", reason="the [onnx] extra is not installed")


@pytest.fixture
def onnx_versions(tiny_onnx: Path, tmp_path: Path) -> dict[int, Path]:
    """v1: the exported folder; v2: the same weights with a different default search config."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    shutil.copytree(tiny_onnx, v1)
    shutil.copytree(tiny_onnx, v2)
    cfg = json.loads((v2 / "genai_config.json").read_text())
    cfg.setdefault("search", {})["top_k"] = 7
    (v2 / "genai_config.json").write_text(json.dumps(cfg, indent=4))
    return {1: v1, 2: v2}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_onnx_folder_ships_installs_and_updates_by_delta(fleet, onnx_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rel = fleet.publish(onnx_versions[1], 1)
    m = rel.manifest
    assert (m.engine, m.format) == ("ort", "onnx")
    assert (m.sha256, m.size) == packed_sha256(onnx_versions[1])  # one hash over every file
    assert m.plan is not None and m.plan["engine"] == "ort" and m.plan["n_layers"] == 2
    mirror = HostileTransport()
    agent = make_agent(fleet.url, tmp_path / "dev", transport=mirror)
    device_id = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    act, model = active_model(agent.dir)
    assert model.is_dir() and _files(model) == _files(onnx_versions[1])
    assert not list(model.parent.glob("*.tar*"))  # the tar is not kept beside the folder
    health = [e for e in fleet.events(device_id) if e["kind"] == "switched"]
    assert health, fleet.events(device_id)
    with open_engine(model, n_ctx=64, n_threads=1) as engine:  # what the agent's server runs
        assert type(engine).__name__ == "OrtEngine"
        assert engine.complete("Once", SamplingParams.greedy(3)).completion_tokens >= 1

    rel2 = fleet.publish(onnx_versions[2], 2)
    assert agent.run_once() == "switched"
    act2, model2 = active_model(agent.dir)
    assert act2.version == 2 and act2.slot != act.slot
    assert _files(model2) == _files(onnx_versions[2])
    assert any("/delta" in path for _, path, _ in mirror.log), "no delta was asked for"
    last_blob = [path for _, path, _ in mirror.log if "/blobs/" in path][-1]
    assert rel2.manifest.transfers["zstd"].sha256 not in last_blob  # the delta came, not the full tar
    agent.close()


def test_tampered_onnx_folder_no_longer_verifies(fleet, onnx_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(onnx_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    slots = Slots(agent.dir)
    act = slots.active()
    assert slots.verify(act.slot) is not None
    folder = slots.folder_path(act.slot)
    (folder / "genai_config.json").write_bytes((folder / "genai_config.json").read_bytes() + b" ")
    assert slots.verify(act.slot) is None  # an altered file
    (folder / "genai_config.json").write_bytes((onnx_versions[1] / "genai_config.json").read_bytes())
    assert slots.verify(act.slot) is not None
    (folder / "extra.onnx").write_bytes(b"planted")
    assert slots.verify(act.slot) is None  # a planted file
    agent.close()


def test_onnx_model_that_does_not_load_fails_its_health_check(fleet, onnx_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(onnx_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    device_id = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    broken = onnx_versions[2]
    model_file = next(broken.glob("*.onnx"))
    model_file.write_bytes(model_file.read_bytes()[:1000])  # signed, but ONNX Runtime cannot load it
    fleet.publish(broken, 2, architecture="llama", quantization="FP32")  # describing it would fail
    assert agent.run_once() == "health_failed"
    bad = refusals(fleet, device_id)
    assert bad[0]["kind"] == "health_failed" and "ONNX Runtime" in bad[0]["reason"], bad[0]
    act, model = active_model(agent.dir)
    assert act.version == 1 and _files(model) == _files(onnx_versions[1])
    agent.close()


def test_onnx_folder_is_refused_where_models_are_sealed_at_rest(fleet, onnx_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(onnx_versions[1], 1)
    agent = Agent(AgentConfig(data_dir=tmp_path / "dev", server=fleet.url, poll_interval_s=0.1,
                              health=HealthPolicy(max_latency_s=120.0), at_rest_key=tmp_path / "device.key"))
    device_id = agent.enroll(fleet.token())
    assert agent.run_once() != "switched"
    assert Slots(agent.dir).active() is None
    assert any("sealed at rest" in (e["reason"] or "") for e in refusals(fleet, device_id)), refusals(fleet, device_id)
    agent.close()


def test_a_folder_that_is_not_an_onnx_model_is_refused_before_signing(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgegen.errors import InvalidModelError

    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(InvalidModelError, match="genai_config.json"):
        fleet.release(folder, 1)
    assert not list((tmp_path).glob("**/*.tar"))
