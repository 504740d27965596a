"""Speed and memory of a model on this machine, measured the way a device would see it.

``run_bench`` measures in a fresh child process (so peak RSS is the model's, not ours): load time,
time to first token, prefill and decode tokens/s, peak RSS; plus file size and the machine's read
bandwidth, from which it derives decode efficiency: at batch 1 decoding is bandwidth-bound, so
``decode tok/s x bytes read per token / bandwidth`` says how close to the hardware limit we run.
Bytes read per token are the weights every token touches (all matrices; the embedding table only if
it doubles as the output matrix). This module does not change models.

Speed figures follow ``rounds``: ``run_bench_many`` measures every file once per round in a fresh
process, files interleaved (A B C A B C ...), on at most the idle cores; each figure is the median over
rounds with its low/high and CV, ratios to the first file are taken within rounds, and the set carries
a ``Noise`` verdict (noisy: do not conclude). ``run_bench`` is the one-file case.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import EngineError
from edgegen.evaluate.rounds import Noise, Spread, idle_cores, interleave, load_average, ratios, williams_orders
from edgegen.formats.gguf_file import open_reader, read_per_token, validate_gguf


@dataclass
class BenchReport:
    model: str
    file_bytes: int
    n_threads: int
    prompt_tokens: int
    gen_tokens: int
    repeats: int
    load_s: float
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_rss_bytes: int
    bytes_per_token: int
    mem_bandwidth_bytes_per_s: float
    decode_bandwidth_efficiency: float
    # spread over interleaved rounds (each round a fresh process); figures above are medians
    rounds: int = 1
    decode_spread: dict | None = None  # Spread.to_dict(): median, low, high, cv, n (tokens/s)
    ttft_spread: dict | None = None  # seconds
    decode_ratio_to_first: dict | None = None  # per-round decode ratio to the set's first file (Spread)
    noise: dict | None = None  # Noise.to_dict(): noisy, reasons, load_before, threads, cores, max_cv

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def noisy(self) -> bool:
        return bool(self.noise and self.noise["noisy"])


def bytes_read_per_token(path: Path) -> int:
    """Weight bytes a decode step reads: every tensor but the embedding lookup (unless tied as output).
    An ONNX folder: its weight bytes in proportion to the weights read per token (``plan.facts``)."""
    if Path(path).is_dir():
        from edgegen.plan.facts import model_facts

        f = model_facts(path)
        return int(f.weight_bytes * min(1.0, f.n_weights_read / max(f.n_params, 1)))
    reader = open_reader(path)
    names = {t.name for t in reader.tensors}
    return sum(int(t.n_bytes) for t in reader.tensors if read_per_token(t.name, names))


def _file_bytes(path: Path) -> int:
    from edgegen.evaluate.quality import describe as describe_any

    return describe_any(path).file_bytes


def measure_bandwidth(n_threads: int, size_bytes: int = 512 * 1024**2, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: ``n_threads`` threads summing disjoint slices of a large array."""
    a = np.ones(size_bytes // 8, dtype=np.float64)
    parts = np.array_split(a, n_threads)
    best = float("inf")
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(np.sum, parts))  # warm up: fault pages in
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def peak_rss_bytes() -> int:
    """This process's peak resident set since exec, in bytes (``VmHWM`` of ``/proc/self/status``;
    ``ru_maxrss`` where there is no procfs). ``ru_maxrss`` alone would not do: Linux carries it across
    exec, so a child forked from a big parent reports the parent's peak (a bench holding 1 GiB saw
    its ``edgegen compress`` child report 1 GiB, whose own VmHWM was 13 MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(model: str, prompt_tokens: int, gen_tokens: int, repeats: int, n_threads: int) -> dict:
    """Runs in the child process; returns raw timings."""
    from edgegen.runtime.base import open_engine
    from edgegen.runtime.engine import SamplingParams, StreamStats

    engine = open_engine(model, n_ctx=prompt_tokens + gen_tokens + 8, n_batch=512, n_threads=n_threads)
    ids = _prompt_ids(engine, prompt_tokens)
    params = SamplingParams.greedy(gen_tokens, ignore_eos=True)
    runs = []
    for _ in range(repeats + 1):  # first run warms caches and is discarded
        stats = StreamStats()
        engine.reset()  # measure a full prefill, not a prompt-cache hit
        t0 = time.perf_counter()
        first = None
        n = 0
        for _tok in engine.stream(ids, params, stats):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        assert first is not None and n == gen_tokens, (n, gen_tokens)
        runs.append({"ttft": first - t0, "decode": (n - 1) / (end - first)})
    runs = runs[1:]
    load_s = engine.load_s
    engine.close()
    peak = peak_rss_bytes()
    return {
        "load_s": load_s,
        "ttft_s": statistics.median(r["ttft"] for r in runs),
        "decode_tokens_per_s": statistics.median(r["decode"] for r in runs),
        "peak_rss_bytes": peak,
    }


def compare_decode(
    models: Sequence[Path], *, rounds: int = 5, tokens: int = 64, threads: Sequence[int] = (1, 2),
    prompt: str = "The quick brown fox jumps over",
) -> dict[str, dict[int, dict]]:
    """Decode speed of several files side by side, in this process: for each thread count, every
    round decodes ``tokens`` greedy tokens with each file in turn (so a slow spell of a shared machine
    hits them all alike). Per file and thread count: ``cpu_ms_per_token`` (process CPU time, robust to
    other load at one thread: no thread waits for a preempted sibling) and ``decode_tokens_per_s``
    (wall clock, what a user sees) as the best round (kept for the speed model), plus ``cpu_spread`` /
    ``decode_spread`` (``rounds.Spread``: median, low, high, CV) and the per-round lists
    ``*_rounds``, so ratios can be taken within rounds."""
    from edgegen.runtime.engine import Engine, SamplingParams

    params = SamplingParams.greedy(tokens, ignore_eos=True)
    raw = {str(m): {n: {"cpu": [], "tps": []} for n in threads} for m in models}
    for n in threads:
        engines = [Engine(m, n_ctx=tokens + 32, n_threads=n) for m in models]
        try:
            for _ in range(rounds):
                for m, engine in zip(models, engines, strict=True):
                    ids = engine.tokenize(prompt)
                    engine.complete(ids, SamplingParams.greedy(1))  # warm
                    c0 = time.process_time()
                    c = engine.complete(ids, params)
                    raw[str(m)][n]["cpu"].append(1e3 * (time.process_time() - c0) / max(1, c.completion_tokens))
                    raw[str(m)][n]["tps"].append(c.decode_tokens_per_s)
        finally:
            for engine in engines:
                engine.close()
    out: dict[str, dict[int, dict]] = {}
    for m, per in raw.items():
        out[m] = {}
        for n, r in per.items():
            out[m][n] = {"cpu_ms_per_token": min(r["cpu"]), "decode_tokens_per_s": max(r["tps"]),
                         "cpu_spread": Spread.of(r["cpu"]).to_dict(), "decode_spread": Spread.of(r["tps"]).to_dict(),
                         "cpu_ms_per_token_rounds": r["cpu"], "decode_tokens_per_s_rounds": r["tps"]}
    return out


def _run_child(model: Path, prompt_tokens: int, gen_tokens: int, repeats: int, threads: int) -> dict:
    args = json.dumps([str(model), prompt_tokens, gen_tokens, repeats, threads])
    code = ("import json, sys; from edgegen.evaluate.bench import _child; "
            "print(json.dumps(_child(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"benchmark of {model} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench_many(
    models: Sequence[Path],
    *,
    prompt_tokens: int = 256,
    gen_tokens: int = 128,
    repeats: int = 1,
    rounds: int = 3,
    n_threads: int | None = None,
    bandwidth: float | None = None,
) -> list[BenchReport]:
    """One ``BenchReport`` per model, from ``rounds`` interleaved rounds (see the module docstring).
    Threads: ``n_threads`` (default: physical cores), capped at the cores idle before the run."""
    from edgegen.runtime.engine import default_threads

    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    from edgegen.runtime.base import resolve_engine

    for m in models:
        _, kind = resolve_engine(m)  # a GGUF for llama.cpp or an ONNX folder for ONNX Runtime GenAI
        if kind.value == "llamacpp":
            validate_gguf(Path(m))  # truncated or damaged: one line and exit 2 here, not a child's failure
    cores = default_threads()
    load_before = load_average()
    threads = min(n_threads or cores, idle_cores(cores, load_before))
    labels = [str(i) for i in range(len(models))]  # by position: the same file may appear twice
    raw = interleave(labels, lambda i: _run_child(Path(models[int(i)]), prompt_tokens, gen_tokens, repeats, threads),
                     rounds)
    bw = bandwidth or measure_bandwidth(threads)
    decode = {m: Spread.of(raw[m]["decode_tokens_per_s"]) for m in labels}
    ttft = {m: Spread.of(raw[m]["ttft_s"]) for m in labels}
    noise = Noise(load_before=load_before, threads=threads, cores=cores,
                  max_cv=max(max(d.cv for d in decode.values()), max(t.cv for t in ttft.values())))
    first = raw[labels[0]]["decode_tokens_per_s"]
    out = []
    for m in labels:
        path = Path(models[int(m)])
        per_token = bytes_read_per_token(path)
        d, t = decode[m], ttft[m]
        out.append(BenchReport(
            model=str(path), file_bytes=_file_bytes(path), n_threads=threads, prompt_tokens=prompt_tokens,
            gen_tokens=gen_tokens, repeats=repeats,
            load_s=round(statistics.median(raw[m]["load_s"]), 4), ttft_s=round(t.median, 4),
            prefill_tokens_per_s=round(prompt_tokens / t.median, 2), decode_tokens_per_s=round(d.median, 2),
            peak_rss_bytes=int(max(raw[m]["peak_rss_bytes"])), bytes_per_token=per_token,
            mem_bandwidth_bytes_per_s=round(bw), decode_bandwidth_efficiency=round(d.median * per_token / bw, 4),
            rounds=rounds, decode_spread=d.to_dict(), ttft_spread=t.to_dict(),
            decode_ratio_to_first=ratios(first, raw[m]["decode_tokens_per_s"]).to_dict(), noise=noise.to_dict()))
    return out


def run_bench(
    model: Path,
    *,
    prompt_tokens: int = 256,
    gen_tokens: int = 128,
    repeats: int = 1,
    rounds: int = 3,
    n_threads: int | None = None,
    bandwidth: float | None = None,
) -> BenchReport:
    """``run_bench_many`` of one file: medians and spread over ``rounds`` fresh processes."""
    return run_bench_many([model], prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats,
                          rounds=rounds, n_threads=n_threads, bandwidth=bandwidth)[0]


def compare_speed(
    models: Sequence[Path], *, rounds: int = 5, prompt_tokens: int = 511, gen_tokens: int = 32,
    n_threads: int = 1, block: int = 1, use_mmap: bool = True, prefill_chunk: int | None = None,
    fresh_dir: Path | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Prefill and decode cost of several files in interleaved rounds, every round kept.

    Every round runs each file in turn, in the round's order of a Williams design
    (``evaluate.rounds.williams_orders``: each file in each position, and after each other file,
    equally often), on an emptied context (``n_ctx`` = prompt + generated + 8, one batch of 512):
    prefill of ``prompt_tokens`` tokens of fixed English text, then ``gen_tokens`` greedy tokens. Time is
    process CPU time (robust to other load at one thread), split at the first sampled token.

    Decoding is interleaved within the round too: every file prefills in turn, then the files take
    turns at ``block`` decode steps each (``block=1``, the default: A B C, A B C, ... token by token),
    each turn timed on its own. A burst of load from elsewhere on a shared machine (a neighbour's
    memory traffic lasts far longer than one 2-10 ms token) then lands on every file of the round
    alike, so the round's ratios keep far less of it than when each file decodes all its tokens in one
    0.2 s stretch (``block >= gen_tokens``, the former method). A turn may start with less of its
    file's weights in cache than a device running one model would have; ``bench/speed_interleave.py``
    measures how much that moves the ratios.

    Prefill as one batch is one 2-3 s stretch per file, so it keeps the slow swings of a shared
    machine: a byte-identical copy of one file has measured anywhere from 0.70x to 1.25x of it in the
    same round (``bench/results/quant_vs_llamacpp.onebatch-prefill.json``, control rounds). With
    ``prefill_chunk`` every round also prefills the same prompt in pieces of that many tokens, the
    files taking turns piece by piece (``Engine.eval_prompt``; each piece is one llama.cpp batch, so
    the kernels are those of a ``n_ubatch = prefill_chunk`` run), reported as
    ``prefill_lockstep_cpu_ms_per_token``; the one-batch figure is still measured in the same round.

    Where the weights land in memory moves speed too, and stays put while a file is loaded: loaded
    once for a whole run, a byte-identical copy decoded at a steady 0.95x-1.02x of its original, a
    different figure in every run, with a median interval under +-1% wide
    (``bench/results/quant_vs_llamacpp.placement-once.json``, control rows), so one run's rounds could
    not see it.
    Without ``fresh_dir`` every file is loaded once (the rounds share one placement); with it, every
    round copies each file afresh into ``fresh_dir`` (new page-cache pages, flushed to disk first),
    loads the copies in the round's order (new buffers for repacked weights, KV cache and compute),
    touches every weight once with an untimed prefill of up to 32 tokens, times the round, then closes
    and deletes the copies (also when the round fails): placement is drawn anew each round, so the
    rounds' spread and any interval over them include it. The compute buffer's pages that only a
    longer batch touches are still faulted in during the timed one-batch prefill, alike for files of
    one architecture.

    Per file: ``prefill_cpu_ms_per_token`` and ``decode_cpu_ms_per_token`` (and the lockstep prefill),
    one value per round (in round order, so ratios between files can be taken round by round). A
    first, unrecorded round warms every file (with ``fresh_dir``, the short warm-up of each round
    does). Raises ``ValueError`` for ``prefill_chunk`` < 1, ``InvalidModelError`` / ``EngineError``
    from loading and running a file, ``OSError`` from copying one.
    """
    keys = ["prefill_cpu_ms_per_token", "decode_cpu_ms_per_token"]
    if prefill_chunk is not None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        keys.append("prefill_lockstep_cpu_ms_per_token")
    out = {str(m): {key: [] for key in keys} for m in models}
    orders = williams_orders(len(models))
    setup = dict(n_ctx=prompt_tokens + gen_tokens + 8, n_threads=n_threads, use_mmap=use_mmap)
    engines: list = []
    try:
        if fresh_dir is None:
            engines = _load_engines(models, range(len(models)), **setup)
        for r in range(-1 if fresh_dir is None else 0, rounds):
            order = orders[r % len(orders)] if r >= 0 else list(range(len(models)))
            if fresh_dir is None:
                timed = _timed_round(engines, order, prompt_tokens, gen_tokens, block, prefill_chunk)
            else:
                copies = Path(fresh_dir) / f"round-{r}"
                try:
                    engines = _load_engines(_fresh_copies(models, order, copies), order, **setup)
                    for k in order:  # every weight read once (page faults), not timed
                        engines[k].reset()
                        engines[k].eval_prompt(_prompt_ids(engines[k], min(32, prompt_tokens)))
                    timed = _timed_round(engines, order, prompt_tokens, gen_tokens, block, prefill_chunk)
                finally:  # closed before their files go
                    _close_all(engines)
                    engines = []
                    shutil.rmtree(copies, ignore_errors=True)
            if r < 0:
                continue
            for k in order:
                row = out[str(models[k])]
                for key in keys:
                    row[key].append(timed[key][k])
    finally:
        _close_all(engines)
    return out


_SEED_TEXT = "The old lighthouse keeper climbed the stairs each night and watched the sea. "


def _prompt_ids(engine, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """The first ``n`` tokens of ``_SEED_TEXT`` repeated: fixed English text, no BOS (every speed
    figure of this module prefills this prompt)."""
    return engine.tokenize(_SEED_TEXT * (1 + n // 8), add_bos=False)[:n]


def _load_engines(paths: Sequence[Path], order: Sequence[int], **setup) -> list:  # type: ignore[no-untyped-def]
    """``Engine`` per path, loaded in ``order`` (returned in the order of ``paths``)."""
    from edgegen.runtime.engine import Engine

    loaded: dict[int, Engine] = {}
    try:
        for k in order:
            loaded[k] = Engine(paths[k], n_batch=512, **setup)
    except BaseException:
        _close_all(list(loaded.values()))
        raise
    return [loaded[k] for k in range(len(paths))]


def _close_all(engines: Sequence) -> None:
    for engine in engines:
        engine.close()


def _fresh_copies(models: Sequence[Path], order: Sequence[int], into: Path) -> list[Path]:
    """Byte copies of ``models`` in the directory ``into``, written in ``order`` and flushed to disk
    (so their writeback does not overlap the timing)."""
    into.mkdir(parents=True, exist_ok=True)
    copies = [into / f"{k}-{Path(m).name}" for k, m in enumerate(models)]
    for k in order:
        shutil.copyfile(models[k], copies[k])
        with open(copies[k], "rb") as f:
            os.fsync(f.fileno())
    return copies


def _timed_round(engines: Sequence, order: Sequence[int], prompt_tokens: int, gen_tokens: int, block: int,
                 prefill_chunk: int | None) -> dict[str, dict[int, float]]:
    """One round of ``compare_speed``: CPU ms per token of each engine (by index), per figure."""
    from edgegen.runtime.engine import SamplingParams

    ids = [_prompt_ids(e, prompt_tokens) for e in engines]
    params = SamplingParams.greedy(gen_tokens, ignore_eos=True)
    prefill = dict.fromkeys(order, 0.0)
    decode = dict.fromkeys(order, 0.0)
    steps = dict.fromkeys(order, 0)
    streams = {}
    try:
        for k in order:
            engines[k].reset()  # a full prefill, not a prompt-cache hit
            streams[k] = engines[k].stream(ids[k], params)
            c0 = time.process_time()
            next(streams[k], None)
            prefill[k] = time.process_time() - c0
        for start in range(0, gen_tokens - 1, block):
            for k in order:
                c0 = time.process_time()
                got = sum(next(streams[k], None) is not None for _ in range(min(block, gen_tokens - 1 - start)))
                decode[k] += time.process_time() - c0
                steps[k] += got
    finally:
        for stream in streams.values():
            stream.close()
    out = {"prefill_cpu_ms_per_token": {k: 1e3 * prefill[k] / len(ids[k]) for k in order},
           "decode_cpu_ms_per_token": {k: 1e3 * decode[k] / max(1, steps[k]) for k in order}}
    if prefill_chunk:
        lockstep = _lockstep_prefill(engines, ids, order, prefill_chunk)
        out["prefill_lockstep_cpu_ms_per_token"] = {k: 1e3 * lockstep[k] / len(ids[k]) for k in order}
    return out


def _lockstep_prefill(engines: Sequence, ids: Sequence[list[int]], order: Sequence[int],
                      chunk: int) -> dict[int, float]:
    """CPU seconds each engine spends prefilling its prompt in pieces of ``chunk`` tokens, the engines
    taking turns piece by piece in ``order``; the first token is then sampled from the last piece's
    logits and counted too (as the one-batch prefill counts it)."""
    spent = dict.fromkeys(order, 0.0)
    for k in order:
        engines[k].reset()
    for start in range(0, max(len(t) for t in ids), chunk):
        for k in order:
            piece = ids[k][start:start + chunk]
            if piece:
                c0 = time.process_time()
                engines[k].eval_prompt(piece)
                spent[k] += time.process_time() - c0
    from edgegen.runtime.engine import SamplingParams

    for k in order:
        stream = engines[k].stream(ids[k], SamplingParams.greedy(1, ignore_eos=True))
        c0 = time.process_time()
        next(stream, None)
        spent[k] += time.process_time() - c0
        stream.close()
    return spent
