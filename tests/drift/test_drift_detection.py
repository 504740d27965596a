"""Drift detection on real text: Shakespeare's plays (the reference distribution) against modern
technical English (the docstrings of Python's standard library), with the mean output token
log-probability of a real model (stories260K through llama.cpp) among the signals.

Reports the false-alarm rate over many windows drawn from the reference distribution (disjoint from
the reference window) and the detection rate over windows of shifted prompts."""

from __future__ import annotations

import importlib
import inspect
import random
from pathlib import Path

import pytest

from edgegen.drift.monitor import DriftThresholds, Window, compare
from edgegen.drift.signals import Signals, request_signals

STDLIB = ("os", "json", "collections", "functools", "itertools", "pathlib", "re", "string", "textwrap", "shutil",
          "subprocess", "threading", "logging", "argparse", "urllib.parse", "asyncio", "typing", "dataclasses",
          "inspect", "socket", "sqlite3", "csv", "zipfile", "tarfile", "datetime", "decimal", "fractions",
          "statistics", "random", "heapq", "bisect", "calendar", "difflib", "pprint", "enum", "io", "tempfile",
          "glob", "hashlib", "hmac", "secrets", "uuid", "base64", "struct", "codecs", "locale", "platform",
          "signal", "selectors", "ssl", "html", "ast", "dis", "tokenize", "pickle", "copy", "gzip", "bz2", "lzma",
          "zlib", "configparser", "queue", "sched", "contextlib", "abc", "numbers", "math", "operator", "types",
          "weakref", "traceback", "warnings", "unittest", "doctest", "timeit")
REFERENCE, WINDOW = 200, 100


def shakespeare_prompts(plays: Path, rng: random.Random, n: int) -> list[str]:
    lines = []
    for f in sorted(plays.glob("*_gut.txt")):
        lines += [ln.strip() for ln in f.read_text(encoding="utf-8", errors="replace").splitlines()
                  if len(ln.strip()) > 20]
    out = []
    for _ in range(n):
        i = rng.randrange(len(lines) - 3)
        out.append(" ".join(lines[i : i + rng.randint(1, 3)]))
    return out


def milton_prompts(plays: Path, rng: random.Random, n: int) -> list[str]:
    """Milton's verse and prose from the same sdist: same era and language, a subtle shift."""
    lines = []
    for f in sorted((plays.parent.parent / "miltondata" / "texts").glob("*_gut.txt")):
        lines += [ln.strip() for ln in f.read_text(encoding="utf-8", errors="replace").splitlines()
                  if len(ln.strip()) > 20]
    return [" ".join(lines[i : i + rng.randint(1, 3)]) for i in (rng.randrange(len(lines) - 3) for _ in range(n))]


def docstring_prompts(rng: random.Random, n: int) -> list[str]:
    docs = set()
    for name in STDLIB:
        mod = importlib.import_module(name)
        for attr, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) if not attr.startswith("_") else None
            if doc:
                para = doc.split("\n\n")[0].replace("\n", " ").strip()
                if len(para) > 20:
                    docs.add(para)
    pool = sorted(docs)
    return [rng.choice(pool) for _ in range(n)]


@pytest.fixture(scope="module")
def pools(shakespeare: Path, stories_gguf: Path) -> dict[str, list[Signals]]:
    """Signals of real prompts, each answered by the real model (8 tokens, with log-probabilities)."""
    from edgegen.runtime.engine import Engine, SamplingParams

    rng = random.Random(1234)
    texts = {"reference": shakespeare_prompts(shakespeare, rng, 1200), "shifted": docstring_prompts(rng, 300),
             "milton": milton_prompts(shakespeare, rng, 300)}
    params = SamplingParams.greedy(8, logprobs=True)
    out: dict[str, list[Signals]] = {}
    # one thread: llama.cpp's spinning worker threads crawl on a shared, busy CPU
    with Engine(stories_gguf, n_ctx=512, n_threads=1) as engine:
        for name, prompts in texts.items():
            sig = []
            for p in prompts:
                done = engine.complete(p[:300], params)  # the model sees the first 300 characters
                sig.append(request_signals(p, done.token_logprobs))
            out[name] = sig
    return out


def test_false_alarm_and_detection_rates(pools: dict[str, list[Signals]]) -> None:
    rng = random.Random(7)
    same, shifted = pools["reference"], pools["shifted"]
    assert all("mean_logprob" in s.numeric for s in same[:10])  # the model's signal is there
    ref = Window.of(same[:REFERENCE])
    rest = same[REFERENCE:]  # the same distribution, never in the reference
    t = DriftThresholds()
    n_same, n_shift = 200, 50
    false_alarms = sum(compare(ref, Window.of(rng.sample(rest, WINDOW)), t).drift for _ in range(n_same))
    detections = [compare(ref, Window.of(rng.sample(shifted, WINDOW)), t) for _ in range(n_shift)]
    hits = sum(r.drift for r in detections)
    logprob_flags = sum(any(f.name == "mean_logprob" and f.drift for f in r.features) for r in detections)
    subtle = sum(compare(ref, Window.of(rng.sample(pools["milton"], WINDOW)), t).drift for _ in range(n_shift))
    print(f"\ndrift: reference {REFERENCE} Shakespeare prompts, windows of {WINDOW}: false alarms "
          f"{false_alarms}/{n_same} ({false_alarms / n_same:.1%}) on unseen Shakespeare windows; "
          f"detected {hits}/{n_shift} ({hits / n_shift:.0%}) stdlib-docstring windows "
          f"(mean output log-prob drifted in {logprob_flags}/{n_shift}); subtle shift to Milton: "
          f"{subtle}/{n_shift} ({subtle / n_shift:.0%})")
    assert false_alarms / n_same <= 0.05
    assert hits / n_shift >= 0.95
    assert subtle / n_shift > false_alarms / n_same  # sensitive to a subtle shift, not blind to it


def test_half_shifted_window_is_detected(pools: dict[str, list[Signals]]) -> None:
    """A subtler shift: half of the window's prompts come from the other distribution."""
    rng = random.Random(11)
    ref = Window.of(pools["reference"][:REFERENCE])
    mixed = rng.sample(pools["reference"][REFERENCE:], WINDOW // 2) + rng.sample(pools["shifted"], WINDOW // 2)
    assert compare(ref, Window.of(mixed)).drift


def test_engine_logprobs_match_the_full_logits(stories_gguf: Path) -> None:
    """The quality signal is only as good as the engine's per-token log-probabilities: check them
    against a log-softmax of the logits of the same tokens computed in one batch (logits_all)."""
    import numpy as np

    from edgegen.runtime.engine import Engine, SamplingParams

    with Engine(stories_gguf, n_ctx=256, n_threads=1) as engine:
        prompt = engine.tokenize("Once upon a time, there was a little girl")
        toks = list(engine.stream(prompt, SamplingParams.greedy(12, logprobs=True)))
    generated = [t.id for t in toks if t.id >= 0]
    lps = [t.logprob for t in toks if t.id >= 0]
    with Engine(stories_gguf, n_ctx=256, n_threads=1, logits_all=True) as ref:
        logits = ref.logits(prompt + generated).astype(np.float64)
    rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]
    m = rows.max(axis=1, keepdims=True)
    logsm = rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))
    n = len(generated)
    expected = [logsm[i, generated[i]] for i in range(n)]
    assert n >= 8
    np.testing.assert_allclose(lps, expected, atol=1e-3)
    assert len(set(np.round(lps, 4))) > 1  # not a constant (the uniform-distribution bug this caught)
