"""The one seam between the agent and the Edge server that serves the active slot.

    ModelServer (protocol)   start(path, adapter=, adapters=) / swap(...) / stop() / url
    NullServer               serves nothing (``--no-serve``, the crash harness)
    EdgeServer               the OpenAI-compatible Edge server (``edgegen.serve``) in a background
                             uvicorn thread; ``swap`` hands it a new model file (or new adapters)
                             and returns once new requests go to it, without dropping in-flight ones

``adapters``: the extra LoRA adapters served beside the model, ``{name: (file, version label)}``,
all loaded on the one base (multi-LoRA): a request picks one by model name ``<base>+<name>`` or
``<base>+<name>@v<n>`` (``serve/adapters.py``); a request that names none gets the model itself.

``EdgeServer`` uses the Edge server's own app factory and engine swap (``replace_engine``): the new
engine is loaded while the old one serves, requests admitted after the swap go to the new one and
in-flight generations finish on the old one. Its model id is ``<name>@v<version>`` (from the slot's
manifest), so every answer says which version produced it. Observers (Fleet II telemetry) receive a
``GenerationRecord`` per generation request, taken from the HTTP exchange.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

Adapters = dict[str, tuple[Path, str]]  # extra LoRA adapters: name -> (file, version label such as "v2")


class ModelServer(Protocol):
    url: str | None

    def start(self, model_path: Path, *, adapter: Path | None = None, model_id: str | None = None,
              adapters: Adapters | None = None) -> None: ...

    def swap(self, model_path: Path, *, adapter: Path | None = None, model_id: str | None = None,
             adapters: Adapters | None = None) -> None: ...

    def stop(self) -> None: ...


class NullServer:
    url: str | None = None

    def __init__(self) -> None:
        self.model_path: Path | None = None
        self.adapter: Path | None = None
        self.adapters: dict[str, str] = {}  # name -> version label of the extra adapters it would serve

    def start(self, model_path: Path, *, adapter: Path | None = None, model_id: str | None = None,
              adapters: Adapters | None = None) -> None:
        self.model_path, self.adapter = model_path, adapter
        self.adapters = {name: label for name, (_, label) in (adapters or {}).items()}

    def swap(self, model_path: Path, *, adapter: Path | None = None, model_id: str | None = None,
             adapters: Adapters | None = None) -> None:
        self.start(model_path, adapter=adapter, model_id=model_id, adapters=adapters)

    def stop(self) -> None:
        self.model_path = self.adapter = None
        self.adapters = {}


class _Observe:
    """ASGI wrapper: after each /v1/chat/completions or /v1/completions request, hand a
    ``GenerationRecord`` (prompt, token usage, timing, outcome) to the observers (Fleet II telemetry).
    Works from the public HTTP exchange only; streamed answers carry no usage, so tokens are 0 there."""

    PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion"}

    def __init__(self, app: Any, observers: list[Any]) -> None:
        self.app, self.observers = app, observers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        op = self.PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if op is None or not self.observers:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        request, response, status = bytearray(), bytearray(), [0]

        async def receive_() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(request) < 1 << 20:
                request.extend(message.get("body", b""))
            return message

        async def send_wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and len(response) < 1 << 20:
                response.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_, send_wrapped)
        finally:
            self._observe(op, bytes(request), bytes(response), status[0], time.perf_counter() - t0)

    def _observe(self, op: str, request: bytes, response: bytes, status: int, total_s: float) -> None:
        import json

        from edgegen.telemetry.events import GenerationRecord

        try:
            body = json.loads(request or b"{}")
            users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
            prompt = str(users[-1] if users else body.get("prompt", ""))
        except (ValueError, AttributeError):
            prompt = ""
        try:
            usage = json.loads(response).get("usage") or {}
        except (ValueError, AttributeError):
            usage = {}
        ok = 200 <= status < 300
        rec = GenerationRecord(
            prompt=prompt, prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)), ttft_s=None, total_s=total_s, ok=ok,
            error=None if ok else f"HTTP {status}", operation=op)
        for observer in list(self.observers):
            try:
                observer(rec)
            except Exception:
                log.exception("generation observer failed")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EdgeServer:
    """The Edge server (``edgegen.serve``) in a background thread, serving one slot's model."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, n_ctx: int = 2048,
                 n_threads: int | None = None, config: Any = None) -> None:
        self.host, self.port, self.n_ctx, self.n_threads = host, port, n_ctx, n_threads
        self.config = config  # an edgegen.serve.ServerConfig (None: its defaults)
        self.url: str | None = None
        self.observers: list[Any] = []  # callables(GenerationRecord), e.g. the telemetry recorder
        self._runner: Any = None
        self._app: Any = None

    def _engine(self, model_path: Path, adapter: Path | None, model_id: str, adapters: Adapters | None) -> Any:
        """The base, with the model's own adapter (the default: its name and version from ``model_id``,
        ``<base>@v1+<name>@v2``) and the extra ``adapters`` loaded on it, sharing its weights."""
        from edgegen.errors import EngineError
        from edgegen.runtime.base import open_engine

        engine = open_engine(model_path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        try:
            loras = getattr(engine, "adapters", None)
            if (adapter is not None or adapters) and loras is None:
                raise EngineError(f"{type(engine).__name__} cannot apply LoRA adapters")
            if adapter is not None:
                name, _, version = (model_id.split("+", 1)[1] if "+" in model_id else "default").partition("@")
                loras.load(name, adapter, version=version or None)
                loras.default = name
                loras.select(name)
            for name, (path, version) in sorted((adapters or {}).items()):
                loras.load(name, path, version=version)
        except BaseException:
            engine.close()
            raise
        return engine

    def start(self, model_path: Path, *, adapter: Path | None = None, model_id: str | None = None,
              adapters: Adapters | None = None) -> None:
        """``model_id``: the name answers carry (default: from the manifest beside ``model_path``)."""
        from edgegen.serve import BackgroundServer, ServerConfig, create_app

        config = self.config or ServerConfig()
        config.model_id = model_id or slot_model_id(Path(model_path).parent)
        # a model or adapter that does not load fails here, before binding
        engine = self._engine(model_path, adapter, config.model_id, adapters)
        if self.observers:  # Fleet II: token log-probabilities feed the drift/quality signals
            import dataclasses

            config.sampling = dataclasses.replace(config.sampling, logprobs=True)
        self._app = create_app(None, config)
        server = self._app.state.server
        if isinstance(getattr(server, "observers", None), list):
            server.observers = self.observers  # the server's own records: TTFT, tokens, logprobs
            app = self._app
        else:
            app = _Observe(self._app, self.observers)
        self._runner = BackgroundServer(app, self.host, self.port).start()
        self._app.state.server.replace_engine(engine, model_id=config.model_id)
        self.url = self._runner.url
        log.info("edge server on %s serving %s", self.url, config.model_id)

    def swap(self, model_path: Path, *, adapter: Path | None = None, model_id: str | None = None,
             adapters: Adapters | None = None) -> None:
        """Load the new model (or base + new adapters) beside the old one, then switch: requests
        admitted from now on use it, in-flight ones finish on the old one, which is closed afterwards
        (for that while both are in memory; the base's weights are memory-mapped, shared by both)."""
        if self._runner is None:
            self.start(model_path, adapter=adapter, model_id=model_id, adapters=adapters)
            return
        model_id = model_id or slot_model_id(Path(model_path).parent)
        engine = self._engine(model_path, adapter, model_id, adapters)
        self._app.state.server.replace_engine(engine, model_id=model_id)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        self._runner = self._app = None
        self.url = None


def slot_model_id(d: Path) -> str:
    """``<name>@v<version>`` from the slot directory's manifest, else the directory's name; for an
    adapter slot ``<base>@v<n>+<adapter>@v<m>`` (the multi-LoRA servers' ``base+adapter`` naming)."""
    import json

    d = Path(d)
    try:
        signed = json.loads((d / "manifest.json").read_bytes())["signed"]
        this = f"{signed['name']}@v{signed['version']}"
        if signed.get("kind") != "adapter":
            return this
        base = json.loads((d / "base.json").read_bytes())["signed"]
        return f"{base['name']}@v{base['version']}+{this}"
    except (OSError, ValueError, KeyError, TypeError):
        return d.name
