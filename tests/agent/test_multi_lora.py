"""Multi-LoRA through the agent: several adapter streams installed A/B on the one base the device
runs, all served by its Edge server on that base, each picked by model name ``<base>+<adapter>``;
a new adapter version hot-swapped while a request that uses the old one is in flight."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from agent_kit import check_device, make_agent

from edgegen.agent.download import sha256_file
from edgegen.agent.serving import EdgeServer
from edgegen.formats.lora_gguf import random_lora, write_lora_gguf
from edgegen.runtime.engine import Engine, SamplingParams

PROMPT = "Once upon a time"
N = 16


@pytest.fixture(scope="module")
def adapters(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("adapters")
    return {name: random_lora(stories_gguf, d / f"{name}.gguf", rank=4, seed=seed, scale=2.0, name=name)
            for name, seed in (("tldr", 1), ("tldr2", 2), ("poem", 3))}


@pytest.fixture(scope="module")
def reference(stories_gguf: Path, adapters: dict[str, Path]) -> dict[str | None, str]:
    """Greedy answers of the base alone and of each adapter file, loaded directly (no server, no agent)."""
    out: dict[str | None, str] = {}
    for name in (None, *adapters):
        with Engine(stories_gguf, n_ctx=128, n_threads=1, lora_path=adapters[name] if name else None) as e:
            out[name] = e.complete(PROMPT, SamplingParams.greedy(N)).text
    assert len(set(out.values())) == len(out), "the adapters do not change the answer"
    return out


def ask(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=120,
                      json={"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0})


def text(url: str, model: str) -> str:
    r = ask(url, model)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def publish_adapter(fleet, name: str, path: Path, version: int, base: Path):  # type: ignore[no-untyped-def]
    return fleet.publish(path, version, name=name, base_sha256=sha256_file(base)[0])


@pytest.fixture
def device(fleet, model_versions, tmp_path):  # type: ignore[no-untyped-def]
    """A device on base model v1 serving two extra adapter streams, ``tldr`` and ``poem``."""
    fleet.publish(model_versions[1], 1)
    server = GatedEdgeServer(n_ctx=128, n_threads=1)
    agent = make_agent(fleet.url, tmp_path / "dev", server=server)
    agent.config.adapters = ("tldr", "poem")
    agent.device_id_ = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    yield agent
    server.gate.set()
    agent.close()


def test_several_adapters_on_one_base_picked_by_model_name(fleet, device, model_versions, adapters,  # type: ignore[no-untyped-def]
                                                           reference) -> None:
    agent = device
    base = model_versions[1]
    publish_adapter(fleet, "tldr", adapters["tldr"], 1, base)
    publish_adapter(fleet, "poem", adapters["poem"], 1, base)
    assert agent.run_once() == "switched"  # both streams in one poll, one update after the other
    url = agent.server.url
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
    assert ids == ["stories@v1", "stories@v1+poem@v1", "stories@v1+tldr@v1"]
    assert text(url, "stories@v1+tldr") == reference["tldr"]
    assert text(url, "stories@v1+poem@v1") == reference["poem"]
    assert text(url, "stories@v1") == reference[None]  # no adapter named: the base, whatever ran before
    assert ask(url, "stories@v1+nope").status_code == 400
    assert ask(url, "stories@v1+tldr@v2").status_code == 400  # not silently answered by v1
    engine = agent.server._app.state.server.slot.engine
    assert sorted(engine.adapters.names) == ["poem", "tldr"]  # one engine: one base in memory

    # A new tldr: installed into tldr's other slot (poem untouched) and served at once.
    tldr, poem = agent.stream_slots("tldr"), agent.stream_slots("poem")
    slot1, poem_slot = tldr.active().slot, poem.active().slot
    publish_adapter(fleet, "tldr", adapters["tldr2"], 2, base)
    assert agent.run_once() == "switched"
    assert tldr.active().version == 2 and tldr.active().slot != slot1
    assert tldr.verify(slot1) is not None, "the previous tldr slot should stay whole (the B of A/B)"
    assert (poem.active().version, poem.active().slot) == (1, poem_slot)
    assert text(url, "stories@v1+tldr") == reference["tldr2"]
    assert ask(url, "stories@v1+tldr@v1").status_code == 400
    assert text(url, "stories@v1+poem") == reference["poem"]
    switched = [e for e in fleet.events(agent.device_id_) if e["kind"] == "switched" and e["detail"].get("adapter")]
    assert {(e["detail"]["adapter"], e["detail"]["adapter_version"]) for e in switched} == {
        ("tldr", 1), ("poem", 1), ("tldr", 2)}
    assert all(e["version"] is None for e in switched)  # the report's version stays the model's
    check_device(agent.dir)


def test_a_failed_adapter_update_rolls_back_only_that_adapter(fleet, device, model_versions, adapters,  # type: ignore[no-untyped-def]
                                                               reference, tmp_path) -> None:
    """poem v2 is signed and names the right base, but llama.cpp refuses it (shapes from another
    model): its health check fails, poem v1 keeps serving from its slot, tldr is untouched."""
    agent = device
    base = model_versions[1]
    publish_adapter(fleet, "tldr", adapters["tldr"], 1, base)
    publish_adapter(fleet, "poem", adapters["poem"], 1, base)
    assert agent.run_once() == "switched"
    broken = write_lora_gguf(tmp_path / "broken.gguf", "llama", {
        "blk.0.attn_q.weight": (np.zeros((4, 96), np.float32), np.zeros((96, 4), np.float32))}, alpha=4.0)
    publish_adapter(fleet, "poem", broken, 2, base)
    poem_before = agent.stream_slots("poem").active()
    assert agent.run_once() == "health_failed"
    assert agent.stream_slots("poem").active() == poem_before
    failed = [e for e in fleet.events(agent.device_id_) if e["kind"] == "health_failed"]
    assert failed and failed[0]["detail"]["adapter"] == "poem" and failed[0]["detail"]["adapter_version"] == 2
    url = agent.server.url
    assert text(url, "stories@v1+poem") == reference["poem"]
    assert text(url, "stories@v1+tldr") == reference["tldr"]
    assert agent.run_once() == "failed_before"  # not tried again


def test_a_model_as_an_extra_adapter_stream_is_refused(fleet, device, model_versions) -> None:  # type: ignore[no-untyped-def]
    """A full model published under an adapter stream's name is refused: nothing but adapters rides
    beside the model, and the base keeps serving."""
    agent = device
    fleet.publish(model_versions[2], 1, name="poem")
    assert agent.run_once() == "refused"
    assert agent.stream_slots("poem").active() is None
    refused = [e for e in fleet.events(agent.device_id_) if e["kind"] == "update_refused"]
    assert refused[0]["reason"].startswith("BindingError") and refused[0]["detail"]["adapter"] == "poem"
    assert text(agent.server.url, "stories@v1") != ""


# ---- hot swap with a request in flight ----------------------------------------------------------


class GatedEngine:
    """The real engine, paused after the first token of each generation until ``gate`` opens: a
    test seam that holds a request in flight for as long as the test needs, whatever the CPU speed."""

    def __init__(self, engine: Engine, gate: threading.Event, started: threading.Event) -> None:
        self._engine, self._gate, self._started = engine, gate, started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stream(self, *args: Any, **kw: Any) -> Iterator[Any]:
        for i, tok in enumerate(self._engine.stream(*args, **kw)):
            yield tok
            if i == 0:
                self._started.set()
                assert self._gate.wait(120), "the test never opened the gate"


class GatedEdgeServer(EdgeServer):
    """The agent's Edge server; the next engine it loads after ``gate_next()`` is a ``GatedEngine``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()
        self._gate_next = False

    def gate_next(self) -> None:
        self._gate_next = True

    def _engine(self, *args: Any) -> Any:
        engine = super()._engine(*args)
        if self._gate_next:
            self._gate_next = False
            return GatedEngine(engine, self.gate, self.started)
        return engine


def test_hot_swap_keeps_the_in_flight_stream_on_the_old_adapter(fleet, device, model_versions, adapters,  # type: ignore[no-untyped-def]
                                                                reference) -> None:
    agent, server = device, device.server
    base = model_versions[1]
    server.gate_next()
    publish_adapter(fleet, "tldr", adapters["tldr"], 1, base)
    assert agent.run_once() == "switched"  # the engine serving tldr v1 is the gated one
    url = server.url
    old = server._app.state.server.slot.engine
    assert isinstance(old, GatedEngine)

    server.gate.clear()
    streamed: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                "model": "stories@v1+tldr", "prompt": PROMPT, "max_tokens": N, "temperature": 0,
                "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    streamed.append(json.loads(line[6:])["choices"][0]["text"])

    client = threading.Thread(target=stream)
    client.start()
    assert server.started.wait(60), "the streaming request never started generating"

    publish_adapter(fleet, "tldr", adapters["tldr2"], 2, base)
    outcome: list[str] = []
    swapper = threading.Thread(target=lambda: outcome.append(agent.run_once()))
    swapper.start()
    deadline = time.monotonic() + 120
    while server._app.state.server.slot.engine is old:  # wait for the swap (install + health first)
        assert time.monotonic() < deadline and swapper.is_alive(), f"no swap: {outcome}"
        time.sleep(0.05)
    # The stream is still held after its first token, and the swap waits for it to end.
    assert client.is_alive() and swapper.is_alive(), "the swap did not wait for the in-flight request"
    # A request admitted now gets the new adapter (it runs once the one worker is free).
    after: list[str] = []
    nxt = threading.Thread(target=lambda: after.append(text(url, "stories@v1+tldr")))
    nxt.start()
    deadline = time.monotonic() + 60
    while server._app.state.server.scheduler.waiting < 1:  # admitted, queued behind the held stream
        assert time.monotonic() < deadline, "the next request was not admitted"
        time.sleep(0.02)
    server.gate.set()
    for t in (client, swapper, nxt):
        t.join(120)
    assert outcome == ["switched"]
    assert after == [reference["tldr2"]]
    assert "".join(streamed) == reference["tldr"], "the in-flight stream did not finish on the old adapter"
    assert len(streamed) > 1
    assert agent.stream_slots("tldr").active().version == 2


def test_a_new_base_drops_the_adapters_made_for_the_old_one(fleet, device, model_versions, adapters) -> None:  # type: ignore[no-untyped-def]
    """The device moves to base v2: tldr v1 (made for v1) is no longer served, its next version for
    v1 is refused as an adapter for the wrong base, and a version made for v2 is installed and served."""
    agent = device
    publish_adapter(fleet, "tldr", adapters["tldr"], 1, model_versions[1])
    assert agent.run_once() == "switched"
    fleet.publish(model_versions[2], 2)
    assert agent.run_once() == "switched"  # the base; tldr v1 stays installed, made for v1, not served
    assert agent.slots.active().version == 2
    url = agent.server.url
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
    assert ids == ["stories@v2"]
    assert ask(url, "stories@v2+tldr").status_code == 400
    publish_adapter(fleet, "tldr", adapters["tldr2"], 2, model_versions[1])  # still for the old base
    assert agent.run_once() == "refused"
    refused = [e for e in fleet.events(agent.device_id_) if e["kind"] == "update_refused"]
    assert "is for base model" in refused[0]["reason"] and refused[0]["detail"]["adapter_version"] == 2
    publish_adapter(fleet, "tldr", adapters["tldr2"], 3, model_versions[2])
    assert agent.run_once() == "switched"
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
    assert ids == ["stories@v2", "stories@v2+tldr@v3"]
    with Engine(model_versions[2], n_ctx=128, n_threads=1, lora_path=adapters["tldr2"]) as e:
        assert text(url, "stories@v2+tldr") == e.complete(PROMPT, SamplingParams.greedy(N)).text


def mapped_memfd_inodes(name: str) -> set[str]:
    """Inodes of the memory files called ``name`` mapped into this process (llama.cpp mmaps models)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split()[4] for line in lines if f"memfd:{name}" in line}


def test_sealed_base_is_one_copy_in_ram_across_an_adapter_hot_swap(fleet, model_versions, adapters,  # type: ignore[no-untyped-def]
                                                                    reference, tmp_path) -> None:
    """With encryption at rest the base is decrypted into a memory file; while an adapter is
    hot-swapped (old engine still finishing a request, new engine loaded) both map that same file:
    the base is in RAM once, not once per engine."""
    from edgegen.agent.agent import Agent, AgentConfig
    from edgegen.agent.health import HealthPolicy

    fleet.publish(model_versions[1], 1)
    server = GatedEdgeServer(n_ctx=128, n_threads=1)
    agent = Agent(AgentConfig(data_dir=tmp_path / "dev", server=fleet.url, poll_interval_s=0.1,
                              health=HealthPolicy(max_latency_s=120.0), at_rest_key=tmp_path / "key" / "device.key",
                              adapters=("tldr",)), server=server)
    try:
        agent.enroll(fleet.token())
        assert agent.run_once() == "switched"
        server.gate_next()
        publish_adapter(fleet, "tldr", adapters["tldr"], 1, model_versions[1])
        assert agent.run_once() == "switched"
        assert mapped_memfd_inodes("model.gguf") and len(mapped_memfd_inodes("model.gguf")) == 1
        old = server._app.state.server.slot.engine
        server.gate.clear()
        held = threading.Thread(target=lambda: text(server.url, "stories@v1+tldr"))
        held.start()
        assert server.started.wait(60)
        publish_adapter(fleet, "tldr", adapters["tldr2"], 2, model_versions[1])
        outcome: list[str] = []
        swapper = threading.Thread(target=lambda: outcome.append(agent.run_once()))
        swapper.start()
        deadline = time.monotonic() + 120
        while server._app.state.server.slot.engine is old:
            assert time.monotonic() < deadline and swapper.is_alive(), f"no swap: {outcome}"
            time.sleep(0.05)
        assert swapper.is_alive()  # two engines open now: the old one holds a request
        assert len(mapped_memfd_inodes("model.gguf")) == 1, "each engine has its own copy of the base"
        server.gate.set()
        held.join(120)
        swapper.join(120)
        assert outcome == ["switched"]
        assert text(server.url, "stories@v1+tldr") == reference["tldr2"]
    finally:
        server.gate.set()
        agent.close()


def test_mirror_rewriting_the_adapter_versions(fleet, model_versions, adapters, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A mirror holds an extra adapter stream back (or points it elsewhere) by rewriting the desired
    state: in the unsigned hint it is ignored, in the signed statement the signature breaks."""
    from agent_kit import HostileTransport, replace_body

    fleet.publish(model_versions[1], 1)
    mirror = HostileTransport()
    agent = make_agent(fleet.url, tmp_path / "dev", transport=mirror)
    agent.config.adapters = ("tldr",)
    try:
        agent.enroll(fleet.token())
        assert agent.run_once() == "switched"
        publish_adapter(fleet, "tldr", adapters["tldr"], 1, model_versions[1])

        def hint(_q: httpx.Request, r: httpx.Response) -> httpx.Response:
            body = json.loads(r.read())
            body["adapters"] = {"tldr": None}
            return replace_body(r, json.dumps(body).encode())

        mirror.on(r"/v1/device/desired$", hint)
        assert agent.run_once() == "switched"  # the signed statement decides, not the hint
        assert agent.stream_slots("tldr").active().version == 1
        publish_adapter(fleet, "tldr", adapters["tldr2"], 2, model_versions[1])

        def statement(_q: httpx.Request, r: httpx.Response) -> httpx.Response:
            body = json.loads(r.read())
            body["statement"]["signed"]["adapters"] = {"tldr": 1}  # "stay on v1"
            return replace_body(r, json.dumps(body).encode())

        mirror.clear()
        mirror.on(r"/v1/device/desired$", statement)
        assert agent.run_once() == "refused"
        assert agent.stream_slots("tldr").active().version == 1
        mirror.clear()
        assert agent.run_once() == "switched"
        assert agent.stream_slots("tldr").active().version == 2
    finally:
        agent.close()
        mirror.close()
