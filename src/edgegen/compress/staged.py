"""Prune -> distill -> quantize, one call: ``edgegen compress SRC -o OUT --prune P --distill-minutes M``.

    compress_staged(src, out, prune_target=PruneTarget.parse("keep=0.6"), distill_minutes=20,
                    budget=Budget.of(max_size_mib=60), calib_text=..., distill_text=...) -> StagedReport

Stages, each a library call of its own package, their files kept in ``workdir`` (default
``OUT.stages/``) so a second run resumes instead of starting again:
    prune     ``prune.prune`` on the calibration text -> ``pruned.gguf`` (reused if present)
    distill   ``distill.distill`` with the source as teacher -> ``distilled.gguf`` (resumes from its
              checkpoint; skipped when ``distill_minutes`` is 0)
    quantize  ``compress.pipeline.compress`` (calibrated mixed precision under ``budget``) -> ``out``

How much to prune is the caller's choice (``prune_target``), or, with ``PruneTarget.parse("auto")``,
the budget's: ``prune.budget.auto_keep`` turns the size budget (``max_size_mib`` or ``bpw``) and the
speed budget (``--speed-of``) into a fraction of block weights to keep, so that what remains fits at
4.5 bits per weight; when quantization alone fits at or above that floor, nothing is pruned or
distilled (stages: quantize only) and the report says why. An HF folder is converted to an F32 GGUF
first. Errors are those of the stages (PruneTargetError, BudgetError, TokenizerMismatchError,
InvalidTextError, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.compress.pipeline import Budget, CompressConfig, compress
from edgegen.compress.report import CompressReport
from edgegen.errors import BudgetError, ModelNotFoundError

Progress = Callable[[str, int, int], None]


@dataclass
class StagedReport:
    prune: dict[str, Any]
    distill: dict[str, Any] | None
    compress: CompressReport
    workdir: str
    stages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "workdir": self.workdir, "prune": self.prune,
                "distill": self.distill, "compress": self.compress.to_dict()}


def compress_staged(
    src: Path | str, out: Path | str, *, prune_target: Any, distill_minutes: float = 0.0,
    budget: Budget | None = None, calib_text: str, distill_text: str | None = None,
    config: CompressConfig | None = None, distill_config: Any = None, workdir: Path | str | None = None,
    progress: Progress | None = None, distill_progress: Callable[[Any], None] | None = None,
) -> StagedReport:
    """Run the stages (module docstring); ``distill_config`` (a ``DistillConfig``) overrides the
    defaults of the distill stage, its budget always ``distill_minutes``."""
    from dataclasses import replace

    from edgegen.distill import DistillConfig, distill
    from edgegen.prune import prune

    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelNotFoundError(f"model not found: {src}")
    if distill_minutes < 0:
        raise BudgetError(f"the distillation budget cannot be negative ({distill_minutes} minutes)")
    work = Path(workdir) if workdir is not None else out.with_name(out.name + ".stages")
    work.mkdir(parents=True, exist_ok=True)
    stages = []
    if src.is_dir():
        from edgegen.formats.convert import convert_model

        converted = work / "source-f32.gguf"
        if not converted.exists():
            convert_model(src, converted, dtype="f32")
        src = converted
        stages.append("convert")
    decision = None
    if getattr(prune_target, "auto", False):
        decision = decide_auto(src, budget)
        if decision.keep >= 1.0:
            result = compress(src, out, budget=budget, calib_text=calib_text, config=config, progress=progress)
            return StagedReport(prune={"auto": decision.to_dict(), "skipped": "quantization alone fits at or "
                                       f"above {decision.floor_bpw} bits per weight"}, distill=None,
                                compress=result, workdir=str(work), stages=[*stages, "quantize"])
        prune_target = replace(prune_target, auto=False, keep=decision.keep)
    pruned = work / "pruned.gguf"
    report = prune(src, pruned, prune_target, calib_text=calib_text,
                   progress=(lambda s, d, t: progress("prune", d, t)) if progress else None)
    stages.append("prune")
    student, dist = pruned, None
    if distill_minutes > 0:
        cfg = replace(distill_config or DistillConfig(budget_minutes=distill_minutes), budget_minutes=distill_minutes)
        dist_out = work / "distilled.gguf"
        dist = distill(pruned, src, dist_out, text=distill_text or calib_text, config=cfg,
                       workdir=work / "distill", progress=distill_progress).to_dict()
        student = dist_out
        stages.append("distill")
    result = compress(student, out, budget=budget, calib_text=calib_text, config=config, progress=progress)
    stages.append("quantize")
    prune_report = report.to_dict() if decision is None else {**report.to_dict(), "auto": decision.to_dict()}
    return StagedReport(prune=prune_report, distill=dist, compress=result, workdir=str(work), stages=stages)


def decide_auto(src: Path, budget: Budget | None) -> Any:
    """``prune.budget.auto_keep`` for the GGUF ``src`` under ``budget`` (an ``AutoPrune``)."""
    from edgegen.formats.gguf_file import validate_gguf
    from edgegen.prune.budget import auto_keep, floor_ns_per_weight, weight_counts

    counts = weight_counts(validate_gguf(src))
    max_bytes = None
    if budget is not None and budget.max_bytes is not None:
        max_bytes = budget.max_bytes
    elif budget is not None and budget.bpw is not None:  # tensor bits per weight, as the quantizer counts
        max_bytes = int(budget.bpw * (counts.block + counts.other) / 8) + counts.overhead_bytes
    decode_ms = budget.max_decode_ms if budget is not None else None
    ns = floor_ns_per_weight(dict(budget.speed_costs)) if decode_ms is not None and budget.speed_costs else None
    return auto_keep(counts, max_bytes=max_bytes, max_decode_ms=decode_ms, ns_floor=ns)
