"""A bounded load test against ``edgegen serve`` in its own process (so its memory can be measured):
two rounds of 32 concurrent streaming clients against ``--max-queue 8`` on loopback. Only 200s and
503s; every 200 is a complete, well-formed SSE stream; every 503 carries Retry-After; the server's
resident memory stays within 10% of its warmed-up baseline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.serve.kit import AUTH, KEY, sse_events, wait_until

CLIENTS, MAX_QUEUE, TOKENS = 32, 8, 12


@pytest.fixture(scope="module")
def served(smollm2_q4_1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    exe = Path(sys.executable).with_name("edgegen")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from edgegen.cli import main; main()"]
    cmd += ["serve", str(smollm2_q4_1), "--port", "0", "--max-queue", str(MAX_QUEUE), "--ctx", "512",
            "--threads", "1", "--api-key", KEY, "--model-id", "smollm2"]
    env = {**os.environ, "EDGEGEN_HOME": str(tmp_path_factory.mktemp("home"))}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        assert url, f"edgegen serve exited with {proc.poll()}"
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining
        wait_until(lambda: _health(url) == 200, timeout_s=120, what="model loaded")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _health(url: str) -> int:
    try:
        return httpx.get(url + "/health", timeout=5).status_code
    except httpx.HTTPError:
        return 0


async def _one(http: httpx.AsyncClient, i: int) -> tuple[int, dict[str, str], list[Any]]:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Tell story number {i}."}],
            "max_tokens": TOKENS, "ignore_eos": True, "temperature": 0.7, "seed": i, "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, dict(r.headers), [json.loads(await r.aread())]
        lines = [line async for line in r.aiter_lines()]
        return 200, dict(r.headers), sse_events(iter(lines))


async def _round(url: str) -> list[tuple[int, dict[str, str], list[Any]]]:
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as http:
        return await asyncio.gather(*(_one(http, i) for i in range(CLIENTS)))


def _well_formed(events: list[Any]) -> None:
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == TOKENS


def test_32_streaming_clients_against_max_queue_8(served: tuple[str, int]) -> None:
    url, pid = served
    server = psutil.Process(pid)
    asyncio.run(_round(url))  # warm-up round: compute buffers, connection handling, allocator pools
    baseline = server.memory_info().rss
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, server.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = asyncio.run(_round(url)) + asyncio.run(_round(url))
    finally:
        stop.set()
        sampler.join()
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= MAX_QUEUE + 1 and statuses.count(503) >= 1, statuses
    for status, headers, events in results:
        if status == 200:
            assert headers["x-edgegen-route"] == "local"
            _well_formed(events)
        else:
            assert events[0]["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1
    final = server.memory_info().rss
    print(json.dumps({"statuses": {str(k): statuses.count(k) for k in (200, 503)}, "rss_baseline": baseline,
                      "rss_peak": peak, "rss_final": final, "peak_growth": round(peak / baseline - 1, 4)}))
    assert peak < 1.10 * baseline, (baseline, peak)
    assert final < 1.10 * baseline, (baseline, final)
