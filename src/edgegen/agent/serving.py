"""The one seam between the agent and the Edge server that serves the active slot.

    ModelServer (protocol)   start(path) / swap(path) / stop() / url
    NullServer               serves nothing (``--no-serve``, the crash harness)
    EdgeServer               the OpenAI-compatible Edge server (``edgegen.serve``) in a background
                             uvicorn thread; ``swap`` hands it a new model file and returns once new
                             requests go to the new model, without dropping in-flight ones

When ``edgegen.serve`` offers no app factory yet, ``EdgeServer`` falls back to a minimal chat
endpoint (``/v1/chat/completions``, non-streaming) over one ``Engine`` behind a lock: a swap loads
the new engine first, then takes the lock (waiting for the in-flight request) and exchanges them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ModelServer(Protocol):
    url: str | None

    def start(self, model_path: Path) -> None: ...

    def swap(self, model_path: Path) -> None: ...

    def stop(self) -> None: ...


class NullServer:
    url: str | None = None

    def __init__(self) -> None:
        self.model_path: Path | None = None

    def start(self, model_path: Path) -> None:
        self.model_path = model_path

    def swap(self, model_path: Path) -> None:
        self.model_path = model_path

    def stop(self) -> None:
        self.model_path = None


class _FallbackChat:
    """Minimal chat app over one Engine; used only until ``edgegen.serve`` provides its factory."""

    def __init__(self, model_path: Path, n_ctx: int) -> None:
        from edgegen.runtime.engine import Engine

        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self.engine = Engine(model_path, n_ctx=n_ctx)
        self.model_path = model_path

    def swap(self, model_path: Path) -> None:
        from edgegen.runtime.engine import Engine

        new = Engine(model_path, n_ctx=self.n_ctx)  # load outside the lock: requests keep flowing
        with self._lock:
            old, self.engine, self.model_path = self.engine, new, model_path
        old.close()

    def app(self) -> Any:
        from fastapi import FastAPI
        from starlette.concurrency import run_in_threadpool

        from edgegen.runtime.engine import SamplingParams

        api = FastAPI(title="edgegen agent (fallback chat)")

        @api.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok", "model": self.model_path.name}

        @api.post("/v1/chat/completions")
        async def chat(body: dict[str, Any]) -> dict[str, Any]:
            params = SamplingParams(max_tokens=int(body.get("max_tokens") or 64),
                                    temperature=float(body.get("temperature", 0.0)),
                                    seed=body.get("seed"))

            def run() -> Any:
                with self._lock:
                    return self.engine.chat(body["messages"], params), str(self.model_path)

            out, path = await run_in_threadpool(run)
            return {
                "object": "chat.completion", "model": path, "created": int(time.time()),
                "choices": [{"index": 0, "finish_reason": out.finish_reason,
                             "message": {"role": "assistant", "content": out.text}}],
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                          "total_tokens": out.prompt_tokens + out.completion_tokens},
            }

        return api


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EdgeServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, n_ctx: int = 2048) -> None:
        self.host, self.port, self.n_ctx = host, port, n_ctx
        self.url: str | None = None
        self._backend: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, model_path: Path) -> None:
        import uvicorn

        self._backend = _FallbackChat(model_path, self.n_ctx)
        port = self.port or free_port(self.host)
        config = uvicorn.Config(self._backend.app(), host=self.host, port=port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="edge-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the edge server did not start")
            time.sleep(0.02)
        self.url = f"http://{self.host}:{port}"
        log.info("edge server on %s serving %s", self.url, model_path)

    def swap(self, model_path: Path) -> None:
        if self._backend is None:
            self.start(model_path)
        else:
            self._backend.swap(model_path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._backend is not None:
            self._backend.engine.close()
        self._backend = self._server = self._thread = None
        self.url = None
