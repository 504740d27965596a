"""Decode speed through ``Engine.stream`` against a bare llama-cpp-python loop, side by side.

Both loops drive the same loaded model, greedy, the same prompt, the same number of tokens, past EOS;
rounds alternate (bare, engine, bare, engine, ...) so machine noise hits both alike. Prints JSON with
the medians and their ratio (target: engine >= 0.95x bare).

    .venv/bin/python bench/overhead.py [MODEL] [--tokens 128] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from edgegen.config import get_settings
from edgegen.hub.sources import DEFAULT_MODEL, pull
from edgegen.runtime.engine import Engine, SamplingParams


def bare_loop(engine: Engine, prompt: list[int], n: int) -> float:
    """The plainest llama-cpp-python decode: its own generator, greedy, nothing else per token."""
    llm = engine._llm
    llm.reset()
    count = 0
    t_first = 0.0
    for _tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
        count += 1
        if count == 1:
            t_first = time.perf_counter()
        if count == n:
            break
    return (n - 1) / (time.perf_counter() - t_first)


def engine_loop(engine: Engine, prompt: list[int], n: int) -> float:
    engine.reset()
    params = SamplingParams.greedy(n, ignore_eos=True)
    count = 0
    t_first = 0.0
    for _tok in engine.stream(prompt, params):
        count += 1
        if count == 1:
            t_first = time.perf_counter()
    assert count == n
    return (n - 1) / (time.perf_counter() - t_first)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    path = pull(a.model, get_settings().home)
    with Engine(path, n_ctx=512, n_threads=a.threads) as engine:
        prompt = engine.tokenize("Once upon a time, in a small village by the sea,", add_bos=True)
        bare_loop(engine, prompt, 16)  # warm-up
        engine_loop(engine, prompt, 16)
        bare, eng = [], []
        for _ in range(a.rounds):
            bare.append(bare_loop(engine, prompt, a.tokens))
            eng.append(engine_loop(engine, prompt, a.tokens))
    b, e = statistics.median(bare), statistics.median(eng)
    print(json.dumps({
        "model": str(path), "tokens": a.tokens, "rounds": a.rounds,
        "bare_decode_tokens_per_s": round(b, 2), "engine_decode_tokens_per_s": round(e, 2),
        "ratio": round(e / b, 4), "bare_all": [round(x, 2) for x in bare], "engine_all": [round(x, 2) for x in eng],
    }, indent=2))


if __name__ == "__main__":
    main()
