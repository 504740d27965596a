"""``compress``: a model in, a calibrated mixed-precision GGUF out, under a size budget.

    compress(src, out, budget=Budget.of(max_size_mib=85), calib=Path("plays/"), progress=cb)
        -> CompressReport

Stages (each reported as ``progress(stage, done, total)``):
    convert    an HF folder is first converted to an F32 GGUF (``formats.convert``), in a temp dir
    calibrate  the full-precision model runs over the calibration text (``calibrate``)
    measure    every 2-D weight is rounded (a row sample) into every candidate type (``mixed.measure``)
    quantize   types are allocated under the budget (``mixed.allocate``), every weight is rounded
               with GPTQ into its type and the GGUF is written atomically (``gguf_out``)

Budgets: ``max_size_mib`` is the whole file; ``bpw`` is tensor bits per parameter (as llama.cpp
counts it); presets name a bpw, or ``smallest``. Bad input fails fast with one sentence, before any
heavy work where possible: a budget below the smallest achievable size (``BudgetError``), an empty
or too short calibration text (``InvalidTextError``), a model in which no tensor fits any block
format (``InvalidModelError``). Nothing is ever left half-written at ``out``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgegen.compress import plan as planning
from edgegen.compress.gguf_out import file_bytes, header_bytes, write_quantized
from edgegen.compress.report import CompressReport, TensorReport
from edgegen.errors import BudgetError, InvalidModelError, ModelNotFoundError, OutputError, UserInputError
from edgegen.evaluate.bench import peak_rss_bytes
from edgegen.formats.gguf_file import field_value, validate_gguf
from edgegen.formats.gguf_write import prepare_output

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)

PRESETS: dict[str, float | None] = {"smallest": None, "q4": 4.85, "q5": 5.7, "q6": 6.6, "q8": 8.5}
DEFAULT_TYPES = ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


@dataclass(frozen=True)
class Budget:
    """Exactly one of: whole-file bytes, tensor bits per weight, or the smallest achievable."""

    max_bytes: int | None = None
    bpw: float | None = None
    smallest: bool = False
    max_decode_ms: float | None = None  # optional speed limit, in ``speed.decode_cost`` units
    speed_costs: Mapping[str, float] | None = None  # the CPU's per-format costs (None: ``speed``'s own)
    max_prefill_ms: float | None = None  # optional prefill limit, in ``speed.prefill_cost`` units
    prefill_costs: Mapping[str, float] | None = None  # the CPU's per-format prefill costs
    # with a speed limit: why the profile may mispredict on this CPU (``speed.profile_mismatch``), else None
    profile_warning: str | None = None
    speed_profile: str | None = None  # the profile file the costs came from (None: ``speed``'s constants)

    @classmethod
    def of(cls, *, max_size_mib: float | None = None, bpw: float | None = None,
           preset: str | None = None, speed_of: Path | None = None, speed_profile: Path | None = None) -> Budget:
        """From CLI-style options; ``speed_of``: an existing GGUF the result must decode as fast as,
        on the CPU that ``speed_profile`` (``speed.load_profile``) describes, by default the one
        ``speed``'s constants were measured on. With ``speed_of``, ``profile_warning`` says when that
        CPU's kernel flags differ from this machine's (the CLI prints it; the report keeps it)."""
        given = [x is not None for x in (max_size_mib, bpw, preset)]
        if sum(given) > 1:
            raise UserInputError("give only one of --max-size-mib, --bpw and --preset")
        from edgegen.compress.speed import (
            file_decode_cost,
            file_prefill_cost,
            host_cpu_kind,
            load_profile,
            profile_cpu_kind,
            profile_mismatch,
        )

        costs = load_profile(Path(speed_profile)) if speed_profile is not None else None
        pcosts = load_profile(Path(speed_profile), "prefill_ns_per_weight_1thread") if speed_profile else None
        ms = prefill_ms = None
        if speed_of is not None:
            from edgegen.formats.gguf_file import validate_gguf

            validate_gguf(Path(speed_of))
            ms = file_decode_cost(Path(speed_of), costs)
            prefill_ms = file_prefill_cost(Path(speed_of), pcosts)
            warning = profile_mismatch(profile_cpu_kind(speed_profile), host_cpu_kind())
        else:
            warning = None
        speed = {"max_decode_ms": ms, "speed_costs": costs, "max_prefill_ms": prefill_ms, "prefill_costs": pcosts,
                 "profile_warning": warning, "speed_profile": None if speed_profile is None else str(speed_profile)}
        if max_size_mib is not None:
            if not max_size_mib > 0:
                raise BudgetError(f"the size budget must be positive, not {max_size_mib} MiB")
            return cls(max_bytes=int(max_size_mib * 2**20), **speed)
        if bpw is not None:
            if not bpw > 0:
                raise BudgetError(f"bits per weight must be positive, not {bpw}")
            return cls(bpw=float(bpw), **speed)
        name = (preset or "q4").lower()
        if name not in PRESETS:
            raise UserInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        target = PRESETS[name]
        return cls(smallest=True, **speed) if target is None else cls(bpw=target, **speed)

    def describe(self) -> str:
        size = (f"{self.max_bytes / 2**20:.2f} MiB" if self.max_bytes is not None
                else "smallest" if self.smallest else f"{self.bpw} bpw")
        if self.max_decode_ms is not None:
            size += f", <= {self.max_decode_ms:.3f} ms/token"
        if self.max_prefill_ms is not None:
            size += f", <= {self.max_prefill_ms:.3f} ms/prompt token"
        return size


@dataclass
class CompressConfig:
    seq_len: int = 512  # calibration sequence length (tokens)
    calib_seqs: int = 8  # sequences for the Hessians
    fisher_seqs: int = 2  # of which also run backward for the Fisher diagonals
    sample_rows: int = 256  # rows per tensor rounded into every candidate type when measuring
    damp: float = 0.01  # GPTQ damping, a fraction of the mean Hessian diagonal
    types: tuple[str, ...] = DEFAULT_TYPES  # candidate block formats (F16 is always a candidate)
    seed: int = 0
    # torch threads. One by default: the per-column GPTQ steps are tiny ops, and on a shared machine
    # an OpenMP barrier waiting for a descheduled sibling thread costs milliseconds per op (measured:
    # a 512-token forward takes 2.1 s on one thread, 4-6 s on two, with other jobs running).
    n_threads: int | None = 1


def compress(
    src: Path | str,
    out: Path | str,
    *,
    budget: Budget | None = None,
    calib: Path | str | None = None,
    calib_text: str | None = None,
    config: CompressConfig | None = None,
    progress: Progress | None = None,
) -> CompressReport:
    """Compress ``src`` (GGUF file or HF folder) into ``out``.

    Calibration text comes from ``calib`` (a file or a folder of ``*.txt``) or ``calib_text``; with
    neither, weights are rounded without calibration (plain weighted rounding, types allocated by
    squared weight error).
    """
    budget = budget or Budget.of()
    config = config or CompressConfig()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelNotFoundError(f"model not found: {src}")
    out = prepare_output(out)
    if out.exists() and out.resolve() == src.resolve():
        raise OutputError(f"the output {out} is the source itself; choose another file name")
    text = planning.read_calibration(Path(calib) if calib is not None else None, calib_text)
    with _torch_threads(config.n_threads):
        return _compress(src, out, budget, text, config, progress)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compress(
    src: Path, out: Path, budget: Budget, text: str | None, config: CompressConfig, progress: Progress | None
) -> CompressReport:
    timer = _Timer()
    with tempfile.TemporaryDirectory(prefix="edgegen-compress-") as tmp:
        gguf_path = src
        if src.is_dir():
            from edgegen.formats.convert import convert_model

            gguf_path = convert_model(src, Path(tmp) / "source-f32.gguf", dtype="f32",
                                      progress=_stage(progress, "convert"))
            timer.lap("convert")
        reader = validate_gguf(gguf_path)
        arch = str(field_value(reader, "general.architecture", "llama"))
        model = planning.SourceModel(reader)
        planning.check_experts(model, arch)
        if not model.quantizable(config.types):
            raise InvalidModelError(
                f"{src} has no weight matrix that any block format can hold "
                f"(rows must be a multiple of 32 values)"
            )
        from edgegen.compress.graph_stats import check_loadable

        check_loadable(gguf_path, arch)
        header = header_bytes(reader, arch, model.out_plan({}))
        tensor_budget = _tensor_budget(budget, model, header, config.types)
        cal = None
        if text is not None:
            cal = planning.run_calibration(gguf_path, reader, text, config, _stage(progress, "calibrate"))
            timer.lap("calibrate")
        chol = planning.CholCache(config.damp)
        choices = planning.measure_all(model, cal, config, chol, _stage(progress, "measure"),
                                       budget.speed_costs, budget.prefill_costs)
        timer.lap("measure")
        picks = planning.allocate_types(choices, tensor_budget, budget.max_decode_ms, budget.max_prefill_ms)
        out_plan = model.out_plan({name: c.qtype for name, c in picks.items()})
        rounding = planning.Rounder(model, cal, out_plan, chol)
        write_quantized(out, reader, arch, out_plan, rounding.produce, _stage(progress, "quantize"))
        timer.lap("quantize")
    actual = out.stat().st_size
    expected = file_bytes(header, out_plan)
    if actual != expected:
        log.warning("output is %d bytes, the plan said %d", actual, expected)
    measured_candidates = {ch.name: {c.qtype: [c.nbytes, c.loss] for c in ch.candidates} for ch in choices}
    tensors = [
        TensorReport(
            name=t.name, shape=list(t.shape), type=t.qtype, bytes=t.nbytes,
            predicted_kl=picks[t.name].loss if t.name in picks else 0.0,
            measured_kl=rounding.measured.get(t.name, (0.0, float("nan")))[0],
            rel_output_error=rounding.measured.get(t.name, (0.0, float("nan")))[1],
            candidates=measured_candidates.get(t.name, {}),
        )
        for t in out_plan
    ]
    return CompressReport.build(
        source=str(src), output=str(out), file_bytes=actual, budget=budget.describe(),
        budget_bytes=budget.max_bytes, n_params=model.n_params, calibrated=cal is not None,
        calib_tokens=cal.n_tokens if cal else 0, fisher_tokens=cal.n_fisher_tokens if cal else 0,
        calibration=cal.sources if cal else {},
        seconds=timer.laps, peak_rss_bytes=peak_rss_bytes(), speed_profile_warning=budget.profile_warning,
        speed_profile=budget.speed_profile, tensors=tensors, speed_costs=budget.speed_costs,
        prefill_costs=budget.prefill_costs,
    )


def _tensor_budget(budget: Budget, model: planning.SourceModel, header: int, types: tuple[str, ...]) -> int:
    """Bytes available to the 2-D weights; BudgetError when even the smallest types do not fit."""
    fixed = model.fixed_bytes()  # 1-D tensors (and anything kept as is), padded
    smallest = model.min_bytes(types)
    n_mat = len(model.matrices)
    if budget.smallest:
        return smallest
    if budget.max_bytes is not None:
        available = budget.max_bytes - header - fixed - 31 * n_mat  # worst-case alignment padding
        least = header + fixed + smallest + 31 * n_mat
        if available < smallest:
            raise BudgetError(
                f"no quantization fits in {budget.max_bytes / 2**20:.2f} MiB: the smallest this model "
                f"can be made is {least / 2**20:.2f} MiB"
            )
        return available
    assert budget.bpw is not None
    available = int(budget.bpw * model.n_params / 8) - model.fixed_raw_bytes()
    if available < smallest:
        least = 8 * (smallest + model.fixed_raw_bytes()) / model.n_params
        raise BudgetError(f"no quantization reaches {budget.bpw} bits per weight: the least is {least:.3f}")
    return available


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


class _Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t0, 2)
        self.t0 = now


__all__ = ["compress", "Budget", "CompressConfig", "CompressReport", "PRESETS"]
