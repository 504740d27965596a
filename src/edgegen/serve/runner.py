"""Run an app under uvicorn: blocking (the CLI) or in a background thread (tests, the fleet agent).

The listening socket is bound here, before uvicorn starts, so port 0 works and the caller knows the
real port at once. ``BackgroundServer`` is a context manager: ``with BackgroundServer(app) as srv:``
gives ``srv.url`` (``http://127.0.0.1:PORT``) once uvicorn accepts connections, and stops it (in-flight
responses get ``graceful_s`` to finish) on exit.

This module does not build apps or load models.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(app: Any, graceful_s: float, **uvicorn_kw: Any) -> uvicorn.Config:
    kw: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": graceful_s, "lifespan": "on"}
    kw.update(uvicorn_kw)
    return uvicorn.Config(app, **kw)


def serve_forever(app: Any, host: str, port: int, *, on_listening: Callable[[str], None] | None = None,
                  graceful_s: float = 30.0, **uvicorn_kw: Any) -> None:
    """Bind, report the URL through ``on_listening``, serve until SIGINT/SIGTERM."""
    sock = bind(host, port)
    server = uvicorn.Server(_config(app, graceful_s, **uvicorn_kw))
    if on_listening is not None:
        on_listening(url_of(sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, graceful_s: float = 5.0,
                 **uvicorn_kw: Any) -> None:
        self.app = app
        self._sock = bind(host, port)
        self.url = url_of(self._sock)
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_config(app, graceful_s, **uvicorn_kw))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start: {self._error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.url} did not start within {timeout_s}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight responses finish (up to ``graceful_s``), join. Idempotent."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
