"""Short distillation trials: which peak learning rate (and sequence length) recovers a pruned model best.

    PYTHONPATH=src .venv/bin/python bench/distill_lr.py PRUNED.gguf --lrs 2.5e-4,5e-4 --minutes 5 [--seq-len 256]

Each learning rate is a fresh ``distill`` run of the pruned student from the F16 reference for
``--minutes`` (linear decay to zero by then, 2 torch threads, the teacher in llama.cpp beside it) on
``cli.prune.DISTILL_PLAYS``; then the pruned model and every result are scored against the reference on
``--chunks`` x 512 tokens of ``hub.texts.EVALUATION_PLAYS`` (``quant_vs_llamacpp.quality``, as
``bench/prune_distill.py`` scores). Prints one JSON line per trial and the scores. Trials run one after
another: on 2 cores a second job would take their steps. Results of 2026-12-02:
``bench/results/distill_lr_trials.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from quant_vs_llamacpp import quality  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pruned", type=Path)
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgegen-distill-lr"))
    ap.add_argument("--lrs", default="2.5e-4,5e-4")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=16)
    args = ap.parse_args()

    from edgegen.cli.prune import DISTILL_PLAYS
    from edgegen.distill import DistillConfig, distill
    from edgegen.formats.convert import cached_reference
    from edgegen.hub.sources import pull
    from edgegen.hub.texts import EVALUATION_PLAYS, plays_text

    ref = cached_reference(pull("smollm2-135m-instruct", args.home), args.home)
    args.work.mkdir(parents=True, exist_ok=True)
    text = plays_text(args.home, DISTILL_PLAYS)
    evalt = args.work / "eval.txt"
    evalt.write_text(plays_text(args.home, EVALUATION_PLAYS))
    outs = [args.pruned]
    for lr in (float(x) for x in args.lrs.split(",")):
        tag = f"lr{lr:g}-s{args.seq_len}-{args.minutes:g}min"
        run = args.work / tag
        shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resumption
        out = args.work / f"{tag}.gguf"
        cfg = DistillConfig(budget_minutes=args.minutes, lr=lr, seq_len=args.seq_len, n_threads=args.threads,
                            checkpoint_minutes=args.minutes + 1)
        r = distill(args.pruned, ref, out, text=text, config=cfg, workdir=run)
        print(json.dumps({"lr": lr, "seq_len": args.seq_len, "minutes": args.minutes, "steps": r.steps,
                          "loss_first": r.kl_first, "loss_last": r.kl_last}), flush=True)
        outs.append(out)
    q = quality(outs, ref, evalt, args.chunks, args.threads)
    for o in outs:
        print(json.dumps({"file": o.name, "kl_mean": q[str(o)]["kl_mean"], "top1": q[str(o)]["top1_agreement"]}))


if __name__ == "__main__":
    main()
