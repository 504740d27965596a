"""``prune``: a GGUF in, a narrower and/or shallower GGUF out, chosen by importance on calibration text.

    prune(src, out, PruneTarget.parse("layers=24,ffn=1024"), calib_text=text) -> PruneReport

Steps: read the source (``llama`` family, what ``compress.forward`` runs), tokenize the text with the
model's own tokenizer (llama.cpp), score on ``seqs`` sequences of ``seq_len`` tokens (``importance``),
plan (``plan.make_plan``), write (``apply.write_pruned``). A target that keeps everything writes the
source's tensors unchanged (same logits). Errors: ModelNotFoundError / InvalidModelError for the
source, PruneTargetError for the target (before any scoring), InvalidTextError for too little text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.compress.forward import open_forward
from edgegen.errors import UnsupportedArchitectureError
from edgegen.prune.apply import check_per_layer_source
from edgegen.prune.importance import Importance, score
from edgegen.prune.plan import PrunePlan, PruneTarget, Shape, make_plan

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class PruneReport:
    source: str
    output: str
    plan: dict
    source_bytes: int
    output_bytes: int
    calib_tokens: int
    block_influence: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def model_shape(fwd: Any) -> Shape:
    """The uniform shape of a loaded forward; UnsupportedArchitectureError for per-layer widths (deci)."""
    hp = fwd.hp
    widths = {tuple(fwd.w[f"blk.{i}.ffn_down.weight"].shape) for i in range(hp.n_layer)}
    if not hp.uniform or len(widths) > 1:
        raise UnsupportedArchitectureError(
            "this model already has per-layer widths (deci); prune its uniform source instead")
    return Shape(hp.n_layer, int(fwd.w["blk.0.ffn_down.weight"].shape[1]), hp.n_head, hp.n_head_kv,
                 hp.n_embd, hp.head_dim)


def tokenize(path: Path, text: str) -> tuple[list[int], int | None]:
    """Token ids of ``text`` by the model's own tokenizer (llama.cpp), and its BOS id if it adds one."""
    from edgegen.runtime.engine import Engine

    with Engine(path, n_ctx=64, n_threads=1) as eng:
        add_bos = eng.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        return eng.tokenize(text, add_bos=False, special=False), (eng.bos_id if add_bos else None)


def importance_of(path: Path, fwd: Any, text: str, seq_len: int, seqs: int,
                  progress: Callable[[int, int], None] | None = None) -> Importance:
    from edgegen.compress.calibrate import token_sequences

    tokens, bos = tokenize(path, text)
    return score(fwd, token_sequences(tokens, seq_len, seqs, bos), progress)


def prune(src: Path | str, out: Path | str, target: PruneTarget, *, calib_text: str,
          seq_len: int = 256, seqs: int = 8, progress: Progress | None = None) -> PruneReport:
    """Prune ``src`` to ``target`` and write ``out``; see the module docstring."""
    import torch

    from edgegen.formats.gguf_write import prepare_output
    from edgegen.prune.apply import write_pruned

    src, out = Path(src), prepare_output(Path(out))
    reader, _meta, fwd = open_forward(src)
    shape = model_shape(fwd)
    target.resolve(shape)  # a bad target fails before the scoring pass
    if target.per_layer:
        check_per_layer_source(str(_meta.get("general.architecture", "llama")))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imp = importance_of(src, fwd, calib_text, seq_len, seqs,
                            (lambda d, t: progress("score", d, t)) if progress else None)
    finally:
        torch.set_num_threads(before)
    plan = make_plan(imp, shape, target)
    del fwd
    write_pruned(reader, plan, out, progress=(lambda d, t: progress("write", d, t)) if progress else None)
    return PruneReport(source=str(src), output=str(out), plan=plan.to_dict(), source_bytes=src.stat().st_size,
                       output_bytes=out.stat().st_size, calib_tokens=imp.n_tokens,
                       block_influence=[round(float(x), 5) for x in np.asarray(imp.block_influence)])


def plan_for(src: Path, target: PruneTarget, calib_text: str, seq_len: int = 256, seqs: int = 8) -> PrunePlan:
    """Only the plan (no file written): for benches and reports."""
    _reader, _meta, fwd = open_forward(Path(src))
    return make_plan(importance_of(Path(src), fwd, calib_text, seq_len, seqs), model_shape(fwd), target)
