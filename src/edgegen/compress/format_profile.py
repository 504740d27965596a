"""This CPU's decode and prefill cost of each block format under llama.cpp: the speed profile that
``compress --speed-of`` plans with (``speed.load_profile``), measured rather than assumed.

ggml-cpu picks kernels by the CPU's SIMD flags (and repacks some formats into interleaved layouts
where the flags allow), so a format's cost per weight differs from one CPU kind to another by more than
the margins a speed limit works within: a profile measured on the target CPU is what makes
``--speed-of`` hold there. ``measure`` writes one model once per format (every matrix that format fits
in it, the rest in ``base``; plain round-to-nearest, as the values do not change the kernels' speed),
times the files in interleaved rounds (``evaluate.bench.compare_speed``: one thread, process CPU time,
prefill of a ``prompt``-token prompt, then ``tokens`` greedy tokens, Williams order), and fits ns per
weight (``fit_costs``). ``save`` keeps the result in the data dir under the CPU's kind
(``speed.CpuKind``) and ``cached`` finds it again, so ``edgegen profile-cpu`` runs once per machine
kind and every later ``edgegen compress --speed-of`` on that kind uses it.

Per-weight cost (``fit_costs``), with T the median CPU ms per token of a file and N the weights that a
token reads: the base file gives ``ns_base = T_base / N``; a file holding format X in the matrices X
fits (N_X of the weights read) and ``base`` in the rest gives ``ns_X = ns_base + (T_X - T_base) / N_X``,
which is ``T_X / N`` where X fits every matrix. Decode reads every matrix, and the token embedding
only when it doubles as the output; prefill applies every matrix but the embedding and output to each
prompt token (``speed.read_per_prompt_token``). The per-token work outside the matrices (attention,
norms, sampling) is spread evenly over all weights: every complete plan of one model reads the same N
weights, so that share is equal for any two plans and comparisons between plans are exact under the
additive model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.compress.speed import CpuKind, read_per_prompt_token
from edgegen.errors import UserInputError

FULL = ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "F32")
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
FORMATS = (*FULL, *KQUANTS)
BASE = "Q4_0"
DECODE_KEY, PREFILL_KEY = "ns_per_weight_1thread", "prefill_ns_per_weight_1thread"


@dataclass(frozen=True)
class WeightsRead:
    """Weights a token reads in one file layout, for decode and for prefill (counts of weights)."""

    decode: int
    prefill: int

    @classmethod
    def of(cls, shapes: Mapping[str, tuple[int, ...]], matrices: Sequence[str]) -> WeightsRead:
        """Pure: over ``matrices`` (names in a file whose tensors have ``shapes``)."""
        from edgegen.formats.gguf_file import read_per_token

        names = set(shapes)
        size = {n: int(np.prod(shapes[n])) for n in matrices}
        return cls(sum(v for n, v in size.items() if read_per_token(n, names)),
                   sum(v for n, v in size.items() if read_per_prompt_token(n)))


def fit_costs(times: Mapping[str, Mapping[str, float]], total: WeightsRead,
              in_format: Mapping[str, WeightsRead], base: str = BASE) -> dict[str, dict[str, float]]:
    """Pure: ns per weight per format from measured medians.

    ``times[q]``: ``{"decode": ms per generated token, "prefill": ms per prompt token}`` of the file for
    format ``q`` (``base`` among them); ``total``: weights read per token in any file of the model;
    ``in_format[q]``: of those, the ones held in ``q`` in its file. Returns ``{q: {DECODE_KEY: ns,
    PREFILL_KEY: ns}}``; a format holding no weights read by a token gets no figure for that phase.
    Raises ``ValueError`` if ``base`` was not timed or ``total`` reads nothing.
    """
    if base not in times:
        raise ValueError(f"the base format {base} must be timed: the other formats are fitted against it")
    if total.decode <= 0 or total.prefill <= 0:
        raise ValueError("the model reads no weights per token")
    out: dict[str, dict[str, float]] = {}
    for q, t in times.items():
        row: dict[str, float] = {}
        for phase, key in (("decode", DECODE_KEY), ("prefill", PREFILL_KEY)):
            n_all, n_q = getattr(total, phase), getattr(in_format[q], phase)
            if n_q <= 0:
                continue
            ns_base = times[base][phase] * 1e6 / n_all
            row[key] = ns_base + (t[phase] - times[base][phase]) * 1e6 / n_q
        out[q] = row
    return out


def picks_for(shapes: Mapping[str, tuple[int, ...]], matrices: Sequence[str], qtype: str,
              base: str = BASE) -> dict[str, str]:
    """Pure: per matrix, ``qtype`` where its rows fit ``qtype``'s blocks, else ``base``, else F16."""
    from edgegen.compress.blocks import storage_type

    def fits(q: str, name: str) -> bool:
        return storage_type(q).fits(shapes[name][1])

    return {n: qtype if fits(qtype, n) else base if fits(base, n) else "F16" for n in matrices}


def write_in_format(ref: Path, out: Path, qtype: str, base: str = BASE) -> tuple[Path, dict[str, str]]:
    """``ref`` (a GGUF) written to ``out`` with ``picks_for``'s formats, plain rounding; returns the
    path and the picks. An existing ``out`` is kept (the picks are recomputed)."""
    from edgegen.compress.blocks import storage_type
    from edgegen.compress.gguf_out import write_quantized
    from edgegen.compress.plan import SourceModel
    from edgegen.formats.gguf_file import field_value, open_reader

    reader = open_reader(ref)
    model = SourceModel(reader)
    picks = picks_for(model.shapes, model.matrices, qtype, base)
    if out.exists():
        return out, picks
    plan = model.out_plan(picks)

    def produce(t):  # noqa: ANN001, ANN202
        qt = storage_type(t.qtype)
        W = model.weight(t.name)
        if t.name not in picks:
            return W.astype(np.float32)
        if qt.name in ("F16", "F32"):
            return qt.quantize(W)
        blocks = W.reshape(-1, qt.block)
        grid = qt.fit_rtn(blocks)
        return qt.pack(qt.block_codes(blocks, grid), grid).reshape(W.shape[0], -1)

    arch = str(field_value(reader, "general.architecture", "llama"))
    tmp = out.with_name(out.name + ".part")
    write_quantized(tmp, reader, arch, plan, produce)
    os.replace(tmp, out)
    return out, picks


def measure(ref: Path, work: Path, *, formats: Sequence[str] = FORMATS, rounds: int = 5, prompt: int = 511,
            tokens: int = 32, cpu: CpuKind | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Time ``formats`` on this CPU with the weights of ``ref`` (a GGUF) and fit ns per weight.

    Files go to ``work`` (kept, so a second run skips writing them). ``progress(stage, done, total)``
    reports ``"write"`` per file and ``"time"`` once before the rounds. Returns the profile as JSON data:
    ``formats`` (per format the median and spread of CPU ms per generated and per prompt token, and the
    fitted ``ns_per_weight_1thread`` and ``prefill_ns_per_weight_1thread``), ``skipped`` (formats that
    fit none of the model's matrices), the settings and ``cpu`` (``cpu.to_dict()``). Raises
    ``UserInputError`` for an unknown format or a model that ``base`` fits nowhere.
    """
    from edgegen.compress.blocks import storage_type
    from edgegen.compress.plan import SourceModel
    from edgegen.evaluate.bench import compare_speed
    from edgegen.evaluate.rounds import Spread
    from edgegen.formats.gguf_file import open_reader

    wanted = [q.upper() for q in formats]
    for q in wanted:
        try:
            storage_type(q)
        except KeyError:
            raise UserInputError(f"unknown block format {q!r}; known: {', '.join(FORMATS)}") from None
    if BASE not in wanted:
        wanted.insert(0, BASE)
    model = SourceModel(open_reader(ref))
    total = WeightsRead.of(model.shapes, model.matrices)
    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    held: dict[str, WeightsRead] = {}
    skipped: list[str] = []
    for i, q in enumerate(wanted):
        picks = picks_for(model.shapes, model.matrices, q)
        mine = [n for n, p in picks.items() if p == q]
        if not mine:
            if q == BASE:
                raise UserInputError(f"{BASE} fits none of {ref.name}'s matrices: its rows are too narrow to profile")
            skipped.append(q)
            continue
        held[q] = WeightsRead.of(model.shapes, mine)
        files[q], _ = write_in_format(ref, work / f"{q}.gguf", q)
        if progress:
            progress("write", i + 1, len(wanted))
    if progress:
        progress("time", 0, rounds)
    load_start = os.getloadavg()
    raw = compare_speed(list(files.values()), rounds=rounds, prompt_tokens=prompt, gen_tokens=tokens, n_threads=1)
    spreads = {q: {"decode_cpu_ms_per_token": Spread.of(raw[str(p)]["decode_cpu_ms_per_token"]),
                   "prefill_cpu_ms_per_token": Spread.of(raw[str(p)]["prefill_cpu_ms_per_token"])}
               for q, p in files.items()}
    medians = {q: {"decode": s["decode_cpu_ms_per_token"].median, "prefill": s["prefill_cpu_ms_per_token"].median}
               for q, s in spreads.items()}
    fitted = fit_costs(medians, total, held)
    table = {q: {**{k: {f: round(v, 4) for f, v in s.to_dict().items()} for k, s in spreads[q].items()},
                 **{k: round(v, 4) for k, v in fitted[q].items()}} for q in files}
    return {"reference": str(ref), "weights_read_per_token": total.decode,
            "weights_read_per_prompt_token": total.prefill,
            "weights_in_format": {q: {"decode": w.decode, "prefill": w.prefill} for q, w in held.items()},
            "base": BASE, "rounds": rounds, "prompt_tokens": prompt, "tokens": tokens, "threads": 1,
            "clock": "process CPU time", "cpus": os.cpu_count(), "cpu": None if cpu is None else cpu.to_dict(),
            "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(),
            "formats": table, "skipped": skipped}


def profile_path(home: Path, cpu: CpuKind) -> Path:
    """Where ``save`` keeps the profile of CPU kind ``cpu`` under the data dir ``home``: a readable
    stem of the model name plus a digest of model and kernel flags, so two kinds never share a file."""
    digest = hashlib.sha256(json.dumps(cpu.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9]+", "-", cpu.model.lower()).strip("-")[:40] or "cpu"
    return Path(home) / "speed-profiles" / f"{stem}-{digest}.json"


def save(profile: Mapping, home: Path, cpu: CpuKind) -> Path:
    """Write ``profile`` (``measure``'s data) as the profile of ``cpu`` (atomically); returns the path.
    Raises ``OSError`` when the data dir cannot be written."""
    path = profile_path(home, cpu)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**profile, "cpu": cpu.to_dict()}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def cached(home: Path, cpu: CpuKind | None) -> Path | None:
    """The saved profile of CPU kind ``cpu``, or None when there is none (or ``cpu`` is unknown)."""
    if cpu is None:
        return None
    path = profile_path(home, cpu)
    return path if path.is_file() else None
