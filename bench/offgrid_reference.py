"""A second SmolLM2 reference whose weights sit on no quantization grid: a short real LoRA fine-tune.

    .venv/bin/python bench/offgrid_reference.py [--home DIR] [--steps 12] [--rank 16] [--lr 4e-3]

Why: SmolLM2-135M-Instruct's published weights were rounded to Q4_1 (embedding Q8_0) by its
publisher, so its dequantized F16 reference favours any quantizer that rediscovers that grid. This
script fine-tunes it for a few minutes and merges the result into an F16 GGUF whose weights are off
every grid, as a model a user fine-tuned themselves would be.

How: our own GGUF -> torch forward (``compress.forward.load_forward``) on the F16 reference; a LoRA
(Hu et al. 2021, arXiv:2106.09685: W + (alpha/r) B A, A Gaussian, B zero) on every weight matrix,
including the tied embedding/output; AdamW on next-token loss over Shakespeare plays that are in
neither the calibration nor the evaluation split (``hub.texts``), sequences of ``--seq`` tokens. The
merged weights are written as F16 (1-D tensors F32) to ``<home>/derived/SmolLM2-135M-Instruct.offgrid-
lora<rank>-s<steps>.F16.gguf`` (atomic; a present file is reused: the result is cached).

Prints JSON: training loss first/last, held-out perplexity before/after on the evaluation plays
(a sanity check: the model must stay a language model), and the grid evidence: the relative error
of plain Q4_1 rounding (RMS of round-trip error over RMS of the weights) of the original and of
the fine-tuned matrices. Near 0 for the original means "on the Q4_1 grid"; a value like a
Gaussian's means off it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TRAIN_PLAYS = ("othello", "lear", "romeo_and_juliet", "tempest")
DEFAULTS = {"rank": 16, "steps": 12, "seq": 128, "lr": 4e-3, "alpha": 32.0, "seed": 0}  # minutes on a busy 2-core CPU


def offgrid_path(home: Path, rank: int, steps: int) -> Path:
    return Path(home) / "derived" / f"SmolLM2-135M-Instruct.offgrid-lora{rank}-s{steps}.F16.gguf"


def q4_1_rel_error(W: np.ndarray) -> float:
    """RMS(W - Q4_1 round trip(W)) / RMS(W), round-to-nearest on ggml's Q4_1 grid (gguf-py's quantizer)."""
    import gguf

    q = gguf.quants.quantize(W.astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    R = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_1).reshape(W.shape)
    return float(np.sqrt(np.mean((W - R) ** 2)) / np.sqrt(np.mean(W**2)))


def tokens_of(ref: Path, text: str) -> list[int]:
    from edgegen.runtime.engine import Engine

    with Engine(ref, n_ctx=64, n_threads=1) as eng:
        return eng.tokenize(text, add_bos=False)


def perplexity(fwd, ids: np.ndarray, seq: int, n_seq: int) -> float:  # noqa: ANN001
    import torch
    import torch.nn.functional as F

    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(n_seq):
            x = torch.from_numpy(ids[s * seq:(s + 1) * seq].astype(np.int64))
            logits = fwd(x)  # [T, vocab]
            nll += float(F.cross_entropy(logits[:-1], x[1:], reduction="sum"))
            n += len(x) - 1
    return float(np.exp(nll / n))


def finetune(home: Path, *, rank: int, steps: int, seq: int, lr: float, alpha: float, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from edgegen.compress.forward import open_forward
    from edgegen.compress.plan import SourceModel
    from edgegen.formats.convert import cached_reference
    from edgegen.hub.sources import pull
    from edgegen.hub.texts import (
        CALIBRATION_PLAYS,
        EVALUATION_PLAYS,
        play_files,
        plays_text,
        read_texts,
        shakespeare_texts,
    )

    assert not set(TRAIN_PLAYS) & (set(CALIBRATION_PLAYS) | set(EVALUATION_PLAYS))
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a shared 2-core machine: a second thread mostly waits
    ref = cached_reference(pull("smollm2-135m-instruct", home), home)
    out = offgrid_path(home, rank, steps)
    reader, _meta, fwd = open_forward(ref)
    train_ids = np.asarray(tokens_of(ref, read_texts(play_files(shakespeare_texts(home), TRAIN_PLAYS))))
    eval_ids = np.asarray(tokens_of(ref, plays_text(home, EVALUATION_PLAYS)))
    ppl_before = perplexity(fwd, eval_ids, seq, 4)
    print(f"loaded; eval perplexity {ppl_before:.2f}; training", file=sys.stderr, flush=True)

    base = {n: w for n, w in fwd.w.items() if w.dim() == 2}  # every matrix, embedding included
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for n, w in base.items():
        out_dim, in_dim = w.shape
        A = (torch.randn(rank, in_dim) / np.sqrt(in_dim)).requires_grad_(True)
        B = torch.zeros(out_dim, rank, requires_grad=True)
        lora[n] = (A, B)
    scale = alpha / rank
    opt = torch.optim.AdamW([p for ab in lora.values() for p in ab], lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    t0 = time.perf_counter()
    for _step in range(steps):
        for n, (A, B) in lora.items():
            fwd.w[n] = base[n] + scale * (B @ A)
        start = int(rng.integers(0, len(train_ids) - seq - 1))
        x = torch.from_numpy(train_ids[start:start + seq].astype(np.int64))
        loss = F.cross_entropy(fwd(x)[:-1], x[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if _step % 2 == 0:
            print(f"step {_step} loss {float(loss):.3f} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        merged = {n: (base[n] + scale * (B @ A)).contiguous() for n, (A, B) in lora.items()}
    fwd.w.update(merged)
    ppl_after = perplexity(fwd, eval_ids, seq, 4)

    model = SourceModel(reader)
    grid = {}
    for n in ("blk.0.attn_q.weight", "blk.10.ffn_down.weight", "blk.29.ffn_up.weight"):
        grid[n] = {"original": round(q4_1_rel_error(model.weight(n)), 4),
                   "finetuned": round(q4_1_rel_error(merged[n].numpy()), 4)}
    rng_g = np.random.default_rng(0).standard_normal((64, 576)).astype(np.float32)
    grid["gaussian_64x576"] = round(q4_1_rel_error(rng_g), 4)
    if not out.exists():
        _write_f16(reader, model, {n: m.numpy() for n, m in merged.items()}, out)
    return {"reference": str(ref), "offgrid": str(out), "rank": rank, "alpha": alpha, "lr": lr,
            "steps": steps, "seq": seq, "train_plays": TRAIN_PLAYS, "train_s": round(train_s, 1),
            "loss_first5": round(float(np.mean(losses[:5])), 4), "loss_last5": round(float(np.mean(losses[-5:])), 4),
            "eval_ppl_before": round(ppl_before, 3), "eval_ppl_after": round(ppl_after, 3),
            "q4_1_rel_rounding_error": grid}


def _write_f16(reader, model, merged: dict[str, np.ndarray], out: Path) -> None:  # noqa: ANN001
    from edgegen.compress.blocks import storage_type
    from edgegen.compress.gguf_out import write_quantized
    from edgegen.formats.gguf_file import field_value

    picks = {n: "F16" for n in model.matrices}
    plan = model.out_plan(picks)

    def produce(t):  # noqa: ANN001, ANN202
        if t.name not in picks:
            return model.weight(t.name).astype(np.float32)
        return storage_type("F16").quantize(merged[t.name])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.gguf")
    write_quantized(tmp, reader, str(field_value(reader, "general.architecture", "llama")), plan, produce)
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--rank", type=int, default=DEFAULTS["rank"])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seq", type=int, default=DEFAULTS["seq"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--alpha", type=float, default=DEFAULTS["alpha"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    args = ap.parse_args()
    print(json.dumps(finetune(args.home, rank=args.rank, steps=args.steps, seq=args.seq, lr=args.lr,
                              alpha=args.alpha, seed=args.seed), indent=1))


if __name__ == "__main__":
    main()
