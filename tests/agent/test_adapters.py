"""LoRA adapters as first-class artifacts: real adapter GGUFs built from stories260K, loaded by
llama.cpp, installed A/B by the agent onto the exact base they were made for, served several on one
base by model name ``base+adapter``; an adapter for another base is refused."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from agent_kit import check_device, device_snapshot, make_agent, refusals

from edgegen.agent.download import sha256_file
from edgegen.delta import ENCODING
from edgegen.errors import EngineError, InvalidModelError
from edgegen.formats.lora_gguf import adapter_info, random_lora, write_lora_gguf
from edgegen.runtime.engine import Engine, SamplingParams

PROMPT = "Once upon a time"


def greedy(engine: Engine, n: int = 12) -> str:
    return engine.complete(PROMPT, SamplingParams.greedy(n)).text


@pytest.fixture(scope="module")
def adapters(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("adapters")
    return {name: random_lora(stories_gguf, d / f"{name}.gguf", rank=4, seed=seed, scale=2.0, name=name)
            for name, seed in (("tldr", 1), ("tldr2", 2), ("poem", 3))}


def test_adapter_file_is_what_llamacpp_loads_and_changes_output(stories_gguf, adapters) -> None:  # type: ignore[no-untyped-def]
    arch, alpha, n = adapter_info(adapters["tldr"])
    assert (arch, alpha) == ("llama", 4.0) and n == 10  # 5 layers x (attn_q, attn_v)
    with pytest.raises(InvalidModelError):
        adapter_info(stories_gguf)  # a model is not an adapter
    with Engine(stories_gguf, n_ctx=128, n_threads=1) as base:
        plain = greedy(base)
    with Engine(stories_gguf, n_ctx=128, n_threads=1, lora_path=adapters["tldr"]) as tuned:
        assert greedy(tuned) != plain, "the adapter does not change the output"


def test_several_adapters_share_one_base(stories_gguf, adapters) -> None:  # type: ignore[no-untyped-def]
    with Engine(stories_gguf, n_ctx=128, n_threads=1) as engine:
        base = greedy(engine)
        for name in ("tldr", "poem"):
            engine.adapters.load(name, adapters[name])
        engine.adapters.select("tldr")
        a = greedy(engine)
        engine.adapters.select("poem")
        b = greedy(engine)
        engine.adapters.select("tldr")
        assert greedy(engine) == a  # switching back gives the same answer (no stale KV prefix)
        engine.adapters.select(None)
        assert greedy(engine) == base
    assert len({base, a, b}) == 3
    with Engine(stories_gguf, n_ctx=128, n_threads=1, lora_path=adapters["poem"]) as alone:
        assert greedy(alone) == b  # the same adapter, loaded alone, gives the same answer


def test_llamacpp_refuses_an_adapter_shaped_for_another_base(stories_gguf, tmp_path) -> None:  # type: ignore[no-untyped-def]
    wrong = write_lora_gguf(tmp_path / "wrong.gguf", "llama", {
        "blk.0.attn_q.weight": (np.zeros((4, 96), np.float32), np.zeros((96, 4), np.float32))}, alpha=4.0)
    with pytest.raises(EngineError):
        Engine(stories_gguf, n_ctx=128, n_threads=1, lora_path=wrong)


def test_server_picks_the_adapter_by_model_name(stories_gguf, adapters) -> None:  # type: ignore[no-untyped-def]
    from edgegen.serve import BackgroundServer, ServerConfig, create_app

    def factory() -> Engine:
        e = Engine(stories_gguf, n_ctx=128, n_threads=1)
        for name in ("tldr", "poem"):
            e.adapters.load(name, adapters[name])
        return e

    app = create_app(factory, ServerConfig(model_id="stories"))
    with BackgroundServer(app, "127.0.0.1", 0) as srv:
        def ask(model: str) -> httpx.Response:
            return httpx.post(f"{srv.url}/v1/completions", timeout=60, json={
                "model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0})

        for _ in range(300):  # the engine loads in the background
            if httpx.get(f"{srv.url}/health", timeout=5).status_code == 200:
                break
            time.sleep(0.1)
        texts = {m: ask(m).json()["choices"][0]["text"] for m in ("stories+tldr", "stories+poem", "stories")}
        assert ask("stories+nope").status_code == 400
        assert texts["stories+tldr"] != texts["stories+poem"]
        assert ask("stories+tldr").json()["choices"][0]["text"] == texts["stories+tldr"]


# ---- the agent ---------------------------------------------------------------------------------


@pytest.fixture
def base_device(fleet, model_versions, tmp_path):  # type: ignore[no-untyped-def]
    """A device running base model v1, then switched to follow the adapter stream ``tldr``."""
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.device_id_ = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    fleet.admin.set_device(agent.device_id_, model="tldr")
    yield agent
    agent.close()


def publish_adapter(fleet, path: Path, version: int, base: Path):  # type: ignore[no-untyped-def]
    return fleet.publish(path, version, name="tldr", base_sha256=sha256_file(base)[0])


def test_adapter_installs_a_b_onto_its_base(fleet, base_device, model_versions, adapters) -> None:  # type: ignore[no-untyped-def]
    agent = base_device
    publish_adapter(fleet, adapters["tldr"], 1, model_versions[1])
    assert agent.run_once() == "switched"
    act = agent.slots.active()
    assert (act.name, act.version) == ("tldr", 1)
    model, adapter = agent.slots.runnable(act.slot)
    assert adapter is not None and sha256_file(adapter)[0] == sha256_file(adapters["tldr"])[0]
    other = "b" if act.slot == "a" else "a"
    assert os.path.samefile(model, agent.slots.model_path(other)), "the base was copied, not linked"
    assert agent.slots.verify(act.slot) is not None
    # A new adapter version: a delta from the installed adapter, installed into the other slot.
    rel = publish_adapter(fleet, adapters["tldr2"], 2, model_versions[1])
    assert agent.run_once() == "switched"
    act2 = agent.slots.active()
    assert (act2.version, act2.slot) == (2, other)
    assert sha256_file(agent.slots.adapter_path(other))[0] == rel.manifest.sha256
    switched = [e for e in fleet.events(agent.device_id_) if e["kind"] == "switched"][0]
    assert switched["detail"]["health"]["tokens"] >= 1
    assert switched["detail"]["encoding"] in (ENCODING, "zstd")
    base_bytes = model_versions[1].stat().st_size
    assert switched["detail"]["transfer_bytes"] <= 0.05 * base_bytes * 4  # stories is tiny: see the bench
    check_device(agent.dir)  # the active base + adapter verify


def test_adapter_for_the_wrong_base(fleet, base_device, model_versions, adapters) -> None:  # type: ignore[no-untyped-def]
    """A validly signed adapter, made for another base model (v5): the device running v1 refuses it."""
    agent = base_device
    fleet.publish(adapters["tldr"], 1, name="tldr", base_sha256=sha256_file(model_versions[5])[0])
    before = device_snapshot(agent.dir)
    assert agent.run_once() == "refused"
    assert device_snapshot(agent.dir) == before
    bad = [e for e in refusals(fleet, agent.device_id_) if e["kind"] == "update_refused"]
    assert bad and bad[0]["reason"].startswith("BindingError") and "is for base model" in bad[0]["reason"]
