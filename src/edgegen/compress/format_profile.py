"""This CPU's decode and prefill cost of each block format under llama.cpp: the speed profile that
``compress --speed-of`` plans with (``speed.load_profile``), measured rather than assumed.

ggml-cpu picks kernels by the CPU's SIMD flags (and repacks some formats into interleaved layouts
where the flags allow), so a format's cost per weight differs from one CPU kind to another by more than
the margins a speed limit works within: a profile measured on the target CPU is what makes
``--speed-of`` hold there. ``measure`` writes one model once per format (every matrix that format fits
in it, the rest in ``BASE`` or, where that does not fit either, F16; plain round-to-nearest, as the
values do not change the kernels' speed), times the files in interleaved rounds
(``evaluate.bench.compare_speed``: one thread, process CPU time, prefill of a ``prompt``-token prompt,
then ``tokens`` greedy tokens, Williams order), and fits ns per weight (``fit_costs``: one linear
equation per file under the additive model). ``save`` keeps a full measurement (``saveable``) in the
data dir under the CPU's kind (``speed.CpuKind``) and ``cached`` finds it again, so ``edgegen
profile-cpu`` runs once per machine kind and every later ``edgegen compress --speed-of`` on that kind
uses it.

What a token reads: decode every matrix, and the token embedding only when it doubles as the output;
prefill applies every matrix but the embedding and output to each prompt token
(``speed.read_per_prompt_token``). The per-token work outside the matrices (attention, norms,
sampling) is spread evenly over all weights: every complete plan of one model reads the same N
weights, so that share is equal for any two plans and differences between plans are exact under the
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
MIN_ROUNDS = 3  # fewer rounds give no spread worth the name: such a profile is not saved
MIN_WEIGHTS = 10_000_000  # weights read per token below which a model is not saved as a profile


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


Layout = Mapping[str, WeightsRead]  # format -> weights a token reads in that format, in one file


def layout_of(shapes: Mapping[str, tuple[int, ...]], picks: Mapping[str, str]) -> dict[str, WeightsRead]:
    """Pure: the ``Layout`` of a file whose matrices are stored as ``picks`` (name -> format)."""
    return {q: WeightsRead.of(shapes, [n for n, p in picks.items() if p == q]) for q in sorted(set(picks.values()))}


def fit_costs(times: Mapping[str, Mapping[str, float]], layouts: Mapping[str, Layout]) -> dict[str, dict[str, float]]:
    """Pure: ns per weight per format from the measured medians of files of one model.

    ``times[f]``: ``{"decode": ms per generated token, "prefill": ms per prompt token}`` of file ``f``;
    ``layouts[f]``: which formats that file holds the weights a token reads in. Under the additive
    model every file's time is ``sum over formats q of n_fq * c_q + O`` (O: the per-token work outside
    the matrices, the same in every file of the model, as every file reads the same N weights); with
    ``c'_q = c_q + O / N`` this is ``T_f = sum_q n_fq * c'_q``, one linear equation per file, solved
    per phase for the formats some file holds (least squares where files outnumber formats). Returns
    ``{q: {DECODE_KEY: c'_q, PREFILL_KEY: c'_q}}`` in ns per weight; a format no file holds in a phase
    gets no figure for it. Differences between complete plans of the model are exact under the model.
    With one format per file plus a shared base, this is ``c'_X = c'_base + (T_X - T_base) / n_X``.
    Raises ``ValueError`` when the files cannot separate the formats (fewer independent files than
    formats: a fallback format no file holds alone, say) or read nothing.
    """
    files = list(times)
    out: dict[str, dict[str, float]] = {}
    for phase, key in (("decode", DECODE_KEY), ("prefill", PREFILL_KEY)):
        formats = sorted({q for f in files for q, w in layouts[f].items() if getattr(w, phase) > 0})
        if not formats:
            raise ValueError(f"the files read no weights per token in {phase}")
        A = np.array([[getattr(layouts[f].get(q, WeightsRead(0, 0)), phase) for q in formats] for f in files], float)
        T = np.array([times[f][phase] * 1e6 for f in files])  # ns per token
        if np.linalg.matrix_rank(A) < len(formats):
            raise ValueError(f"the files cannot separate the costs of {', '.join(formats)} in {phase}: "
                             "time a file for each format that any file holds")
        cost, *_ = np.linalg.lstsq(A, T, rcond=None)
        for q, c in zip(formats, cost, strict=True):
            out.setdefault(q, {})[key] = float(c)
    return out


def same_round_times(series: Mapping[str, Mapping[str, Sequence[float]]],
                     base: str = BASE) -> dict[str, dict[str, float]]:
    """Pure: per file and phase, the time to fit with: the median over rounds of its ratio to ``base``'s
    time in the same round, times ``base``'s median time. ``series[f][phase]``: one time per round,
    rounds aligned across files (``compare_speed``). A slow stretch of a shared machine moves every file
    of its round alike, so the same-round ratio keeps far less of it than each file's own median, and
    the differences ``fit_costs`` divides by the few weights a partial format holds stay steady.
    Raises ``ValueError`` if ``base`` is missing or the files have different round counts."""
    if base not in series:
        raise ValueError(f"the base format {base} must be timed: the other formats are fitted against it")
    out: dict[str, dict[str, float]] = {}
    for f, phases in series.items():
        out[f] = {}
        for phase, values in phases.items():
            ref = series[base][phase]
            if len(values) != len(ref):
                raise ValueError(f"{f} has {len(values)} rounds of {phase}, {base} has {len(ref)}")
            out[f][phase] = float(np.median([a / b for a, b in zip(values, ref, strict=True)]) * np.median(ref))
    return out


def picks_for(shapes: Mapping[str, tuple[int, ...]], matrices: Sequence[str], qtype: str,
              base: str = BASE) -> dict[str, str]:
    """Pure: per matrix, ``qtype`` where its rows fit ``qtype``'s blocks, else ``base``, else F16."""
    from edgegen.compress.blocks import storage_type

    def fits(q: str, name: str) -> bool:
        return storage_type(q).fits(shapes[name][1])

    return {n: qtype if fits(qtype, n) else base if fits(base, n) else "F16" for n in matrices}


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """Pure: block format names from ``"Q4_0, q8_0,..."`` (or a list): trimmed, upper-cased, empty
    and repeated names dropped, order kept. Raises ``UserInputError`` for a name with no writer here."""
    from edgegen.compress.blocks import storage_type

    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in names:
        q = raw.strip().upper()
        if not q or q in out:
            continue
        try:
            storage_type(q)
        except KeyError:
            raise UserInputError(f"unknown block format {raw.strip()!r}; known: {', '.join(FORMATS)}") from None
        out.append(q)
    if not out:
        raise UserInputError("no block format to time")
    return out


def write_in_format(ref: Path, out: Path, picks: Mapping[str, str]) -> Path:
    """``ref`` (a GGUF) written to ``out`` (atomically) with each matrix in its ``picks`` format and the
    other tensors as F32; plain round-to-nearest."""
    from edgegen.compress.blocks import storage_type
    from edgegen.compress.gguf_out import write_quantized
    from edgegen.compress.plan import SourceModel
    from edgegen.formats.gguf_file import field_value, open_reader

    reader = open_reader(ref)
    model = SourceModel(reader)
    plan = model.out_plan(dict(picks))

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
    return out


def measure(ref: Path, work: Path, *, formats: str | Sequence[str] = FORMATS, rounds: int = 9, prompt: int = 511,
            tokens: int = 32, cpu: CpuKind | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Time ``formats`` on this CPU with the weights of ``ref`` (a GGUF) and fit ns per weight.

    One file per format (``picks_for``: the format where it fits, else ``BASE``, else F16; F16 and
    ``BASE`` are always timed too, so ``fit_costs`` can separate them) is written into a new folder
    under ``work``, timed, and deleted with the folder afterwards (also on failure).
    ``progress(stage, done, total)`` reports ``"write"`` per file. Returns the profile as JSON data:
    ``formats`` (per format the median and spread of CPU ms per generated and per prompt token of its
    file, of its ratio to the ``BASE`` file's time in the same round, and the fitted
    ``ns_per_weight_1thread`` and ``prefill_ns_per_weight_1thread``, from ``same_round_times``), ``skipped``
    (formats that fit none of the model's matrices), ``complete`` (every format of ``FORMATS`` that
    fits the model was timed, over at least ``MIN_ROUNDS`` rounds), the settings and ``cpu``.
    Raises ``UserInputError`` for an unknown format or a model ``BASE`` fits nowhere (before writing
    anything), ``OSError`` when ``work`` cannot be written.
    """
    import shutil
    import tempfile

    from edgegen.compress.plan import SourceModel
    from edgegen.evaluate.bench import compare_speed
    from edgegen.evaluate.rounds import Spread
    from edgegen.formats.gguf_file import open_reader

    wanted = parse_formats(formats)
    model = SourceModel(open_reader(ref))
    base_picks = picks_for(model.shapes, model.matrices, BASE)
    if BASE not in base_picks.values():
        raise UserInputError(f"{BASE} fits none of {Path(ref).name}'s matrices: no row length is a multiple of 32")
    for q in (BASE, *(["F16"] if "F16" in base_picks.values() else [])):
        if q not in wanted:
            wanted.insert(0, q)
    plans = {q: picks_for(model.shapes, model.matrices, q) for q in wanted}
    skipped = [q for q, p in plans.items() if q not in p.values()]
    plans = {q: p for q, p in plans.items() if q not in skipped}
    layouts = {q: layout_of(model.shapes, p) for q, p in plans.items()}
    total = WeightsRead.of(model.shapes, model.matrices)
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="formats-", dir=work))
    try:
        files: dict[str, Path] = {}
        for i, (q, picks) in enumerate(plans.items()):
            files[q] = write_in_format(ref, folder / f"{q}.gguf", picks)
            if progress:
                progress("write", i + 1, len(plans))
        load_start = os.getloadavg()
        raw = compare_speed(list(files.values()), rounds=rounds, prompt_tokens=prompt, gen_tokens=tokens,
                            n_threads=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    spreads = {q: {k: Spread.of(raw[str(p)][k]) for k in ("decode_cpu_ms_per_token", "prefill_cpu_ms_per_token")}
               for q, p in files.items()}
    series = {q: {"decode": raw[str(p)]["decode_cpu_ms_per_token"], "prefill": raw[str(p)]["prefill_cpu_ms_per_token"]}
              for q, p in files.items()}
    fitted = fit_costs(same_round_times(series), layouts)
    ratios = {q: {ph: Spread.of([a / b for a, b in zip(v, series[BASE][ph], strict=True)])
                  for ph, v in ph_series.items()} for q, ph_series in series.items()}
    table = {q: {**{k: {f: round(v, 4) for f, v in s.to_dict().items()} for k, s in spreads[q].items()},
                 **{f"{ph}_ratio_to_{BASE}": {f: round(v, 4) for f, v in r.to_dict().items()}
                    for ph, r in ratios[q].items()},
                 **{k: round(v, 4) for k, v in fitted.get(q, {}).items()}} for q in files}
    complete = rounds >= MIN_ROUNDS and _fits_any(model) <= set(files)
    return {"reference": str(ref), "weights_read_per_token": total.decode,
            "weights_read_per_prompt_token": total.prefill,
            "layouts": {q: {f: {"decode": w.decode, "prefill": w.prefill} for f, w in lay.items()}
                        for q, lay in layouts.items()},
            "base": BASE, "rounds": rounds, "prompt_tokens": prompt, "tokens": tokens, "threads": 1,
            "clock": "process CPU time", "cpus": os.cpu_count(), "cpu": None if cpu is None else cpu.to_dict(),
            "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(),
            "formats": table, "skipped": skipped, "complete": complete,
            "not_positive": sorted(q for q, r in fitted.items() if any(v <= 0 for v in r.values()))}


def _fits_any(model) -> set[str]:  # noqa: ANN001
    """Formats of ``FORMATS`` that hold at least one of ``model``'s matrices."""
    return {q for q in FORMATS if q in picks_for(model.shapes, model.matrices, q).values()}


def saveable(profile: Mapping) -> str | None:
    """Pure: why ``profile`` (``measure``'s data) should not become this CPU's saved profile, or None.

    A saved profile steers every later ``compress --speed-of`` on the CPU kind, so it must be a full
    measurement: every format that fits, at least ``MIN_ROUNDS`` rounds, on a model of at least
    ``MIN_WEIGHTS`` weights read per token (a smaller one runs from cache, not memory, and its
    per-token overhead drowns the format differences), with every fitted cost positive."""
    if profile.get("rounds", 0) < MIN_ROUNDS or not profile.get("complete"):
        return f"it is partial (save needs every block format that fits and at least {MIN_ROUNDS} rounds)"
    if profile.get("weights_read_per_token", 0) < MIN_WEIGHTS:
        return (f"the model reads {profile.get('weights_read_per_token', 0):,} weights per token, fewer than "
                f"{MIN_WEIGHTS:,}: its weights stay in cache, unlike a real model's")
    if profile.get("not_positive"):
        return f"the fit gave costs <= 0 for {', '.join(profile['not_positive'])} (too noisy: more rounds)"
    return None


def profile_path(home: Path, cpu: CpuKind) -> Path:
    """Where ``save`` keeps the profile of CPU kind ``cpu`` under the data dir ``home``: a readable
    stem of the model name plus a digest of model and kernel flags, so two kinds never share a file."""
    digest = hashlib.sha256(json.dumps(cpu.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9]+", "-", cpu.model.lower()).strip("-")[:40] or "cpu"
    return Path(home) / "speed-profiles" / f"{stem}-{digest}.json"


def save(profile: Mapping, home: Path, cpu: CpuKind) -> Path:
    """Write ``profile`` (``measure``'s data) as the profile of ``cpu`` (atomically); returns the path.
    Raises ``OSError`` when the data dir cannot be written."""
    from edgegen.durable import atomic_write

    path = profile_path(home, cpu)
    atomic_write(path, (json.dumps({**profile, "cpu": cpu.to_dict()}, indent=1) + "\n").encode(), label="profile")
    return path


def cached(home: Path, cpu: CpuKind | None) -> Path | None:
    """The saved profile of CPU kind ``cpu``, or None when there is none (or ``cpu`` is unknown)."""
    if cpu is None:
        return None
    path = profile_path(home, cpu)
    return path if path.is_file() else None
