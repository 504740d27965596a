"""Helpers for the server tests: start real servers on 127.0.0.1 port 0, read SSE and /metrics."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from edgegen.serve import BackgroundServer, ServerConfig, create_app

KEY = "test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # SmolLM2 keeps counting at temperature 0: a long, EOS-free generation


def wait_until(pred: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s}s")
        time.sleep(0.02)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running(model: Path | Callable[[], Any] | None, *, n_ctx: int = 512, wait: bool = True, port: int = 0,
            **config: Any) -> Iterator[BackgroundServer]:
    """A real uvicorn server on 127.0.0.1 over ``model`` (one thread per engine: shared CI cores)."""
    config.setdefault("api_keys", (KEY,))
    app = create_app(model, ServerConfig(**config), engine_options={"n_ctx": n_ctx, "n_threads": 1})
    with BackgroundServer(app, port=port) as srv:
        if wait:
            wait_until(lambda: _healthy(srv.url), what=f"{srv.url} ready")
        yield srv


def sse_events(lines: Iterator[str]) -> list[Any]:
    """Parse an SSE body: JSON events, then the literal "[DONE]" if the stream ended properly."""
    events: list[Any] = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        data = line[len("data: "):]
        events.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return events


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def metrics(url: str) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value}; every line must be a comment or a valid sample."""
    text = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad exposition line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, v in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{val}"' in rest for k, val in labels.items()):
            total += v
    return total


def chat_body(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "any", "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
