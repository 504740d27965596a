"""A hostile mirror between agent and control plane, and helpers to inspect a device's data dir.

``HostileTransport`` forwards every request to the real control plane over loopback, then lets a
test rewrite the response (``on(predicate, rewrite)``): flip bytes, swap bodies, lie about versions,
stream forever. It is an httpx transport, the agent's one network seam.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from edgegen.agent.agent import Agent, AgentConfig
from edgegen.agent.health import HealthPolicy
from edgegen.agent.slots import Slots
from edgegen.agent.trust import TrustedState

Rewrite = Callable[[httpx.Request, httpx.Response], httpx.Response]


class EndlessStream(httpx.SyncByteStream):
    def __init__(self, prefix: bytes = b"", chunk: bytes = b"\0" * 65536) -> None:
        self.prefix, self.chunk, self.sent = prefix, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        if self.prefix:
            self.sent += len(self.prefix)
            yield self.prefix
        while True:
            self.sent += len(self.chunk)
            yield self.chunk


class HostileTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.rules: list[tuple[Callable[[httpx.Request], bool], Rewrite]] = []
        self.log: list[tuple[str, str, dict[str, str]]] = []

    def on(self, predicate: Callable[[httpx.Request], bool] | str, rewrite: Rewrite) -> None:
        if isinstance(predicate, str):
            pattern = re.compile(predicate)
            self.rules.append((lambda r: bool(pattern.search(r.url.path)), rewrite))
        else:
            self.rules.append((predicate, rewrite))

    def clear(self) -> None:
        self.rules.clear()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append((request.method, request.url.path, dict(request.headers)))
        response = self.inner.handle_request(request)
        for predicate, rewrite in self.rules:
            if predicate(request):
                response.read()
                return rewrite(request, response)
        return response

    def close(self) -> None:
        self.inner.close()


class BodyStream(httpx.SyncByteStream):
    """A body delivered as a stream, as a real transport would (``Response(content=...)`` is pre-read)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, len(self.body), 65536):
            yield self.body[i : i + 65536]


def replace_body(response: httpx.Response, body: bytes) -> httpx.Response:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")}
    headers["content-length"] = str(len(body))
    return httpx.Response(response.status_code, headers=headers, stream=BodyStream(body))


def make_agent(url: str, data_dir: Path, transport: httpx.BaseTransport | None = None, **kw) -> Agent:  # type: ignore[no-untyped-def]
    config = AgentConfig(data_dir=data_dir, server=url, poll_interval_s=0.1,
                         health=HealthPolicy(max_latency_s=120.0))
    return Agent(config, transport=transport, **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def device_snapshot(data_dir: Path) -> dict:
    """What is active and the exact bytes of the active model (to prove 'untouched')."""
    slots = Slots(data_dir)
    act = slots.active()
    if act is None:
        return {"active": None}
    return {"active": act, "pointer": slots.pointer.read_bytes(), "model_sha": sha256(slots.model_path(act.slot)),
            "manifest": slots.read_manifest(act.slot)}


def check_device(data_dir: Path, key: bytes | None = None) -> tuple[int, str]:
    """The crash-safety invariant: exactly one active model (+ adapter), verified and loadable.

    active.json names a slot whose manifest carries a valid signature under the device's trusted root,
    whose model file has the manifest's size and sha256, and which llama.cpp loads and generates from.
    Returns (version, slot)."""
    from edgegen.runtime.engine import Engine, SamplingParams

    slots = Slots(data_dir, key=key)
    act = slots.active()
    assert act is not None, "no active model"
    trust = TrustedState.from_trusted_root((data_dir / "trust" / "root.json").read_bytes())
    manifest_bytes = slots.read_manifest(act.slot)
    assert manifest_bytes is not None, f"active slot {act.slot} has no manifest"
    m = trust.verify_signed_manifest(manifest_bytes)
    assert (m.name, m.version, m.sha256) == (act.name, act.version, act.sha256)
    artifact = slots.artifact_path(act.slot, m)
    assert slots.file_sha256(artifact) == (m.sha256, m.size), "active artifact bytes do not verify"
    if m.is_adapter:
        base = slots.file_sha256(slots.model_path(act.slot))[0]
        assert base == m.base_sha256, "the adapter's base model is not the one it was made for"
    with slots.open_runnable(act.slot) as (model, adapter), \
            Engine(model, n_ctx=64, n_threads=1, lora_path=adapter) as engine:
        assert engine.complete("Once", SamplingParams.greedy(2)).completion_tokens >= 1
    return act.version, act.slot


def refusals(fleet, device_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in fleet.events(device_id) if not e["ok"]]


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- agent processes for the crash harness ---------------------------------------------------------

DONE = ("current", "failed_before", "refused", "health_failed", "auth_refused")


def agent_child(data_dir: str, url: str, crash: str | None, deltas: bool = True,
                adapters: tuple[str, ...] = ()) -> None:
    """Body of a forked agent process: poll until current (or a final refusal), maybe SIGKILLed;
    ``adapters``: extra adapter streams it serves beside the model."""
    import logging
    import os

    from edgegen.agent.journal import CRASH_ENV

    logging.disable(logging.CRITICAL)
    if crash:
        os.environ[CRASH_ENV] = crash
    else:
        os.environ.pop(CRASH_ENV, None)
    agent = make_agent(url, Path(data_dir))
    agent.config.deltas = deltas
    agent.config.adapters = adapters
    try:
        outcome = agent.run(until=lambda o: o in DONE)
    finally:
        agent.close()
    os._exit(0 if outcome == "current" else 3)
