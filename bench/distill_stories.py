"""Distillation recovery on stories260K: KL of a pruned student against its teacher after 0..200 steps.

    .venv/bin/python bench/distill_stories.py [--work DIR]

stories260K (``tests/fixtures``) converted to F32 is the teacher; 40 stories sampled from it (seeded,
temperature 1) are the only in-domain text here: 32 train, 8 held out. The student is
``prune(layers=3,ffn=96,kv=2)`` (5 -> 3 blocks, FFN 172 -> 96, 4 -> 2 KV groups); ``distill`` runs
25/50/100/200 steps (one resumed run, seq 64, lr 3e-3, top-32 teacher cache) and
``evaluate_many`` scores every file on the held-out stories (chunks of 64 tokens). Seconds of CPU.
Writes ``bench/results/distill_stories.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgegen.distill import DistillConfig, distill
from edgegen.evaluate.quality import evaluate_many
from edgegen.formats.convert import convert_model
from edgegen.prune import PruneTarget, prune
from edgegen.runtime.engine import Engine, SamplingParams

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    w = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/distill-stories")
    w.mkdir(parents=True, exist_ok=True)
    src = convert_model(REPO / "tests/fixtures/stories260K", w / "f32.gguf", dtype="f32")
    with Engine(src, n_ctx=256, n_threads=1) as e:
        parts = ["Once upon a time" + e.complete("Once upon a time", SamplingParams(
            max_tokens=200, temperature=1.0, seed=s)).text for s in range(40)]
    train, held = w / "train.txt", w / "held.txt"
    train.write_text("\n\n".join(parts[:32]))
    held.write_text("\n\n".join(parts[32:]))
    student = w / "pruned.gguf"
    prune(src, student, PruneTarget.parse("layers=3,ffn=96,kv=2"), calib_text=train.read_text(), seq_len=64, seqs=4)
    outs = [student]
    for steps in (25, 50, 100, 200):  # one run, resumed from its checkpoint each time
        out = w / f"d{steps}.gguf"
        cfg = DistillConfig(budget_minutes=5, seq_len=64, lr=3e-3, max_steps=steps, warmup_steps=2, top_k=32)
        distill(student, src, out, text=train.read_text(), workdir=w / "work", config=cfg)
        outs.append(out)
    reps = evaluate_many(outs, src, held, chunk_tokens=64, max_chunks=16, n_threads=1)
    rows = [{"file": p.name, "steps": int(p.stem[1:]) if p.stem.startswith("d") else 0, "kl_mean": round(r.kl_mean, 4),
             "top1": round(r.top1_agreement, 4), "ppl": round(r.ppl, 3), "ppl_ref": round(r.ppl_ref, 3)}
            for p, r in zip(outs, reps, strict=True)]
    (REPO / "bench/results/distill_stories.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
