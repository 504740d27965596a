"""Model lifecycle: loading happens in the background (``/health`` 503 until ready), and swapping the
served model (what the fleet agent does on an update) drops nothing in flight: the request running
on the old engine finishes in full, requests admitted after the swap run on the new engine, and the
old engine is closed only once it is no longer used."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from edgegen.runtime.engine import Engine
from tests.serve.kit import AUTH, COUNTING, running, sse_events, wait_until


def test_swap_keeps_in_flight_work_and_switches_new_work(smollm2_q4_1: Path, stories_gguf: Path) -> None:
    with running(smollm2_q4_1, n_ctx=256, model_id="smollm2") as srv:
        server = srv.app.state.server
        old = server.slot.engine
        new = Engine(stories_gguf, n_ctx=256, n_threads=1)
        prompt = "Once upon a time"
        assert len(old.tokenize(prompt)) != len(new.tokenize(prompt))  # usage tells the engines apart

        body = {"model": "m", "prompt": COUNTING, "max_tokens": 60, "ignore_eos": True, "temperature": 0,
                "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, headers=AUTH, timeout=120) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)  # generation on the old engine has begun
            swapped: list[bool] = []
            swapper = threading.Thread(
                target=lambda: swapped.append(server.replace_engine(new, model_id="stories")))
            swapper.start()
            wait_until(lambda: server.slot.engine is new, what="new engine installed")
            assert not swapped  # replace_engine is still waiting for the old engine's request
            after = httpx.post(srv.url + "/v1/completions", headers=AUTH, timeout=120,
                               json={"model": "m", "prompt": prompt, "max_tokens": 4, "temperature": 0})
            rest = list(lines)
        swapper.join(60)

        events = sse_events(iter([first, *rest]))
        assert events[-1] == "[DONE]"
        assert [e["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "length"
        assert sum(1 for e in events[:-1] if e["choices"][0]["text"]) >= 50  # the in-flight answer, whole

        assert after.status_code == 200
        assert after.json()["model"] == "stories"
        assert after.json()["usage"]["prompt_tokens"] == len(new.tokenize(prompt))

        assert swapped == [True] and old._closed and server.slot.engine is new
        assert httpx.get(srv.url + "/health").json()["model"] == "stories"


def test_health_is_503_while_loading_then_200(stories_gguf: Path) -> None:
    release = threading.Event()

    def slow_load() -> Engine:
        release.wait(30)
        return Engine(stories_gguf, n_ctx=256, n_threads=1)

    with running(slow_load, wait=False, model_id="stories") as srv:
        h = httpx.get(srv.url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "loading" and h.headers["retry-after"]
        r = httpx.post(srv.url + "/v1/completions", headers=AUTH, json={"model": "m", "prompt": "Hi"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready" and r.headers["retry-after"]
        release.set()
        wait_until(lambda: httpx.get(srv.url + "/health").status_code == 200, what="loaded")
        r = httpx.post(srv.url + "/v1/completions", headers=AUTH, json={"model": "m", "prompt": "Hi"})
        assert r.status_code == 200
