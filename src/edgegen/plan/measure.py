"""``edgegen profile``: measure this device into a ``DeviceProfile``.

    measure_run(model, ...)          one artifact in a fresh child process (so peak RSS is its own):
                                     load time, prefill rate, decode CPU ms/token at a short and a long
                                     position, peak RSS, and energy where a counter exists
    fit_profile(runs, ...)           the profile's constants from those runs (pure)
    measure_profile(models, ...)     both, plus read bandwidth and RAM

Fitting, per engine: each run's dominant storage type gets ``ns_per_weight = (CPU ms/token at the
short position) / weights read``: the per-token work outside the matrices is folded into the
per-weight cost, as ``compress.speed`` does (``token_overhead_ms`` = 0), so predictions are exact for
the measured files and scale with weight count for others. ``attn_ns_per_kv_elem`` is the slope
between the short and long positions. ``base_rss_bytes`` is the median of peak RSS minus weights
minus K/V cache minus prefill logits (``predict.ram_parts``). Decode is timed in CPU seconds of the
process at the profile's thread count
(one thread by default: robust to other load on a shared machine).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgegen.errors import EngineError
from edgegen.plan.energy import EnergyCounter
from edgegen.plan.facts import ModelFacts, model_facts
from edgegen.plan.predict import logits_bytes
from edgegen.plan.profile import DeviceProfile, EngineCosts, Power
from edgegen.runtime.base import EngineKind

SEED_TEXT = "The old lighthouse keeper climbed the stairs each night and watched the sea. "


def child_run(model: str, n_ctx: int, n_prompt: int, n_gen: int, threads: int, repeats: int,
              long_prompt: int) -> dict[str, Any]:
    """Runs inside the child process: returns raw measurements (see ``measure_run``)."""
    from edgegen.evaluate.bench import peak_rss_bytes
    from edgegen.runtime.base import open_engine
    from edgegen.runtime.engine import SamplingParams, StreamStats

    counter = EnergyCounter.open()
    engine = open_engine(model, n_ctx=n_ctx, n_threads=threads, n_batch=512)
    ids_all = engine.tokenize(SEED_TEXT * (1 + max(n_prompt, long_prompt) // 8), add_bos=False)
    params = SamplingParams.greedy(n_gen, ignore_eos=True)

    def run(n: int) -> dict[str, float]:
        engine.reset()
        stats = StreamStats()
        t0 = time.perf_counter()
        first_wall = first_cpu = None
        for _ in engine.stream(ids_all[:n], params, stats):
            if first_wall is None:
                first_wall, first_cpu = time.perf_counter(), time.process_time()
        t1, c1 = time.perf_counter(), time.process_time()
        assert first_wall is not None and first_cpu is not None
        k = max(stats.completion_tokens - 1, 1)
        return {"ttft_s": first_wall - t0, "decode_cpu_ms": 1e3 * (c1 - first_cpu) / k,
                "decode_wall_ms": 1e3 * (t1 - first_wall) / k, "tokens": stats.completion_tokens}

    run(min(n_prompt, 8))  # warm-up
    e0 = counter.read() if counter else None
    c_start = time.process_time()
    short = [run(n_prompt) for _ in range(repeats)]
    long = [run(long_prompt) for _ in range(repeats)] if long_prompt > n_prompt else []
    energy = None
    if counter and e0 is not None:
        j = counter.joules_between(e0, counter.read())
        toks = sum(r["tokens"] for r in short + long)
        energy = {"j_per_token": j / max(toks, 1), "source": counter.source, "cpu_s": time.process_time() - c_start}
    load_s = engine.load_s
    engine.close()

    def med(rows: list[dict[str, float]], key: str) -> float | None:
        return statistics.median(r[key] for r in rows) if rows else None

    return {"model": model, "threads": threads, "n_ctx": n_ctx, "n_prompt": n_prompt, "n_gen": n_gen,
            "long_prompt": long_prompt, "load_s": load_s,
            "ttft_s": med(short, "ttft_s"), "decode_cpu_ms": med(short, "decode_cpu_ms"),
            "decode_wall_ms": med(short, "decode_wall_ms"),
            "decode_cpu_ms_range": [min(r["decode_cpu_ms"] for r in short), max(r["decode_cpu_ms"] for r in short)],
            "long_decode_cpu_ms": med(long, "decode_cpu_ms"), "long_ttft_s": med(long, "ttft_s"),
            "peak_rss_bytes": peak_rss_bytes(), "energy": energy}


def measure_run(model: Path | str, *, n_ctx: int = 1024, n_prompt: int = 16, n_gen: int = 48, threads: int = 1,
                repeats: int = 3, long_prompt: int = 0) -> dict[str, Any]:
    """``child_run`` in a fresh interpreter; ``EngineError`` with the child's last line if it fails."""
    args = json.dumps([str(model), n_ctx, n_prompt, n_gen, threads, repeats, long_prompt])
    code = ("import json, sys; from edgegen.plan.measure import child_run; "
            "print(json.dumps(child_run(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"measuring {model} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fit_profile(runs: Sequence[tuple[ModelFacts, dict[str, Any]]], *, name: str, ram_bytes: int, cores: int,
                threads: int, bandwidth: float, power: Power | None = None) -> DeviceProfile:
    """Profile constants from measured runs (see the module docstring). Pure."""
    by_engine: dict[EngineKind, list[tuple[ModelFacts, dict[str, Any]]]] = defaultdict(list)
    for facts, run in runs:
        by_engine[facts.engine].append((facts, run))
    engines: dict[EngineKind, EngineCosts] = {}
    for kind, rows in by_engine.items():
        kv_bytes = 2 if kind is EngineKind.LLAMACPP else 4
        slopes = [max(0.0, (r["long_decode_cpu_ms"] - r["decode_cpu_ms"]) * 1e6
                      / (f.kv_elems_per_token * (r["long_prompt"] - r["n_prompt"])))
                  for f, r in rows if r.get("long_decode_cpu_ms")]
        attn = statistics.median(slopes) if slopes else 0.0
        ns: dict[str, list[float]] = defaultdict(list)
        prefill, base = [], []
        for f, r in rows:
            dominant = max(f.weights_read, key=lambda t: f.weights_read[t])
            # the attention share of the short run (at its mean position) is priced by ``attn``, not the weights
            attn_ms = attn * f.kv_elems_per_token * (r["n_prompt"] + r["n_gen"] / 2) * 1e-6
            ns[dominant].append((r["decode_cpu_ms"] - attn_ms) * 1e6 / f.n_weights_read)
            n_pf, ttft = (r["long_prompt"], r["long_ttft_s"]) if r.get("long_ttft_s") else (r["n_prompt"], r["ttft_s"])
            prefill.append(max(ttft - r["decode_cpu_ms"] / 1e3, 1e-6) * 1e9 / (n_pf * f.n_weights_read))
            n_prompt = max(r["n_prompt"], r.get("long_prompt") or 0)  # the run that set the peak
            positions = r["n_ctx"] if kind is EngineKind.LLAMACPP else n_prompt + r["n_gen"]
            base.append(r["peak_rss_bytes"] - f.weight_bytes - f.kv_elems_per_token * positions * kv_bytes
                        - logits_bytes(f, n_prompt))
        table = {t: statistics.median(v) for t, v in ns.items()}
        engines[kind] = EngineCosts(decode_ns_per_weight=table, token_overhead_ms=0.0, attn_ns_per_kv_elem=attn,
                                    prefill_ns_per_weight=statistics.median(prefill),
                                    base_rss_bytes=int(max(statistics.median(base), 1)),
                                    kv_bytes_per_elem=kv_bytes, weight_residency=1.0)
    return DeviceProfile(name=name, source=f"measured by edgegen profile on {os.uname().nodename} "
                         f"({time.strftime('%Y-%m-%d', time.gmtime())})", ram_bytes=ram_bytes, cores=cores,
                         threads=threads, read_bandwidth_bytes_per_s=bandwidth, engines=engines, power=power)


def measure_profile(models: Sequence[Path], *, name: str, threads: int = 1, repeats: int = 3,
                    long_prompt: int = 512, progress: Any = None) -> tuple[DeviceProfile, list[dict[str, Any]]]:
    """Measure ``models`` (GGUF files and/or ONNX folders, one per storage type to price) on this device."""
    from edgegen.evaluate.bench import measure_bandwidth

    try:
        import psutil

        ram, cores = int(psutil.virtual_memory().total), int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:  # pragma: no cover
        ram, cores = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), os.cpu_count() or 1
    runs = []
    for i, m in enumerate(models):
        facts = model_facts(m)
        # the long prompt and its generated tokens must fit the model's trained context (engines cap n_ctx there)
        lp = min(long_prompt, facts.n_ctx_train - 64) if facts.n_ctx_train else long_prompt
        runs.append((facts, measure_run(m, n_ctx=lp + 64, threads=threads, repeats=repeats, long_prompt=max(lp, 0))))
        if progress:
            progress(i + 1, len(models))
    measured = [r["energy"] for _, r in runs if r.get("energy")]
    power = None
    if measured:  # a counter exists: the active power it saw while decoding
        watts = [e["j_per_token"] * r["n_gen"] / max(r["decode_cpu_ms"] * r["n_gen"] / 1e3, 1e-9)
                 for (_, r), e in zip(runs, measured, strict=False)]
        power = Power(active_w=statistics.median(watts), idle_w=0.0, source=measured[0]["source"])
    prof = fit_profile(runs, name=name, ram_bytes=ram, cores=cores, threads=threads,
                       bandwidth=measure_bandwidth(threads), power=power)
    return prof, [r for _, r in runs]
