"""Single-stream decode speed through the edge server's HTTP streaming against the bare Engine.

The server runs as ``edgegen serve`` in its own process (as deployed); the client here reads the SSE
stream of ``/v1/completions`` with httpx and times from the first to the last token chunk. The bare
side runs ``Engine.stream`` in this process on the same file, with the same context, threads, prompt,
greedy sampling and token count (past EOS). Rounds alternate (engine, http, engine, http, ...) so
machine noise hits both alike. Prints JSON with the per-round figures, the medians and their ratio
(target: http >= 0.9x engine).

    .venv/bin/python bench/serve_overhead.py [MODEL] [--tokens 128] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from edgegen.config import get_settings
from edgegen.hub.sources import DEFAULT_MODEL, pull
from edgegen.runtime.engine import Engine, SamplingParams

PROMPT = "Once upon a time, in a small village by the sea,"
KEY = "bench-key"


def engine_round(engine: Engine, n: int) -> float:
    count, t_first = 0, 0.0
    for _tok in engine.stream(PROMPT, SamplingParams.greedy(n, ignore_eos=True)):
        count += 1
        if count == 1:
            t_first = time.perf_counter()
    assert count == n, count
    return (n - 1) / (time.perf_counter() - t_first)


def http_round(url: str, n: int) -> float:
    body = {"model": "m", "prompt": PROMPT, "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    chunks, t_first, t_last, usage = 0, 0.0, 0.0, None
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300,
                      headers={"authorization": f"Bearer {KEY}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["text"]:
                chunks += 1
                t_last = time.perf_counter()
                if chunks == 1:
                    t_first = t_last
            if event.get("usage"):
                usage = event["usage"]
    assert usage is not None and usage["completion_tokens"] == n, usage
    # tokens after the first, over the time between the first and the last token chunk
    return (n - 1) / (t_last - t_first)


def start_server(model: Path, threads: int | None, ctx: int) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("edgegen")
    cmd = [str(exe), "serve", str(model), "--port", "0", "--ctx", str(ctx), "--api-key", KEY]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ})
    assert proc.stderr is not None
    url = ""
    for line in proc.stderr:
        if line.startswith("listening on "):
            url = line.split()[-1]
            break
    if not url:
        raise SystemExit(f"edgegen serve exited with {proc.wait()}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=512)
    a = ap.parse_args()
    path = pull(a.model, get_settings().home)
    proc, url = start_server(path, a.threads, a.ctx)
    try:
        with Engine(path, n_ctx=a.ctx, n_threads=a.threads) as engine:
            engine_round(engine, 16)  # warm-up both sides: page in the weights, allocate buffers
            http_round(url, 16)
            eng, web = [], []
            for _ in range(a.rounds):
                eng.append(engine_round(engine, a.tokens))
                web.append(http_round(url, a.tokens))
    finally:
        proc.terminate()
        proc.wait(30)
    e, h = statistics.median(eng), statistics.median(web)
    print(json.dumps({
        "model": str(path), "tokens": a.tokens, "rounds": a.rounds, "threads": a.threads, "ctx": a.ctx,
        "engine_tok_s": [round(x, 2) for x in eng], "http_sse_tok_s": [round(x, 2) for x in web],
        "engine_median_tok_s": round(e, 2), "http_sse_median_tok_s": round(h, 2),
        "ratio_http_over_engine": round(h / e, 3), "target": 0.9, "meets_target": h / e >= 0.9,
    }, indent=2))


if __name__ == "__main__":
    main()
