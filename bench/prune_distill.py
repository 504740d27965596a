"""Pruning and distillation against quantization alone, on SmolLM2: size, decode speed and quality.

    .venv/bin/python bench/prune_distill.py [--home DIR] [--prune layers=24,ffn=1280] [--curve 5,30]
        [--curve-mode independent] [--lr 2.5e-4] [--chunks 16] [--speed-rounds 15] [--bytes-ratio 0.68]

Files (all from the F16 reference, ``formats.convert.cached_reference``):
    llama.cpp Q4_K_M, Q3_K_M, Q2_K     ``llama_cpp.llama_model_quantize`` (the anchor's points)
    quant-only@Q4_K_M                  ``edgegen compress`` at the llama.cpp Q4_K_M file's size
    prune+quant                        ``edgegen prune --target P``, then compress at ``bytes-ratio`` x
                                       quant-only@Q4_K_M's size (so it reads >= 25% fewer weight bytes)
    prune+distill+quant                the pruned model distilled from the reference (``distill``) for the
                                       last ``--curve`` minutes, then compressed at the same size
    quant-only@same-size               compress of the reference at the pruned files' size budget: what
                                       quantization alone reaches at that size
All compressions run before the distillation, so its minutes have both cores to themselves.
Quality: ``evaluate.quality.evaluate_many`` on ``hub.texts.EVALUATION_PLAYS`` (``--chunks`` x 512
tokens, llama-perplexity's definitions). Distillation runs on plays in neither calibration nor
evaluation (``cli.prune.DISTILL_PLAYS``); its curve: the distilled (unquantized) student evaluated
after each budget in ``--curve`` (``--curve-mode chained``: the run resumes from its checkpoint each time;
``independent``: a fresh run per budget), and a power-law fit
KL(t) = a t^-b projecting where it would reach quant-only@same-size's KL. Speed: ``evaluate.bench.
compare_speed`` with ``fresh_dir`` (every file, and a byte-for-byte control copy of the base file, in
interleaved rounds on fresh copies loaded anew each round; the decode steps token by token, one
thread, CPU ms per decoded token); speedups taken round by round against quant-only@Q4_K_M, with the
median's 95% interval (``evaluate.rounds.median_interval``): ">= 1.25x concluded" when the whole
interval is. Writes ``bench/results/prune_distill.json`` and ``prune_distill.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from quant_vs_llamacpp import _spread, llama_quantize, quality  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def compress_to(src: Path, out: Path, size: int, calib_text: str) -> dict:
    from edgegen.compress.pipeline import Budget, compress

    if out.exists():
        return {"cached": True}
    t0 = time.perf_counter()
    rep = compress(src, out, budget=Budget.of(max_size_mib=size / 2**20), calib_text=calib_text)
    return {"wall_s": round(time.perf_counter() - t0, 1), "types": rep.types, "predicted_kl": rep.predicted_kl}


def fit_crossing(curve: list[dict], target: float) -> dict:
    """Least squares on log KL = log a - b log t over the curve's t > 0 points; minutes to reach target."""
    pts = [(math.log(c["minutes"]), math.log(c["kl_mean"])) for c in curve if c["minutes"] > 0 and c["kl_mean"] > 0]
    if len(pts) < 2:
        return {"fit": None}
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
    a = math.exp(my - slope * mx)
    out = {"fit": {"a": round(a, 4), "b": round(-slope, 4)}, "target_kl": target}
    if slope >= 0:
        out["crossing_minutes"] = None
        out["note"] = "KL does not fall with minutes on this curve: no projected crossing"
    else:
        out["crossing_minutes"] = round(math.exp((math.log(target) - math.log(a)) / slope), 1)
    return out


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--prune", default="layers=24,ffn=1280")
    ap.add_argument("--curve", default="5,30")
    ap.add_argument("--lr", type=float, default=2.5e-4, help="peak learning rate")
    ap.add_argument("--schedule", default="linear", help="learning-rate schedule: linear (to 0 by each budget) or "
                    "constant; the curve's runs extend one another, so a linear curve restarts the decay")
    ap.add_argument("--curve-mode", choices=("chained", "independent"), default="independent",
                    help="chained: each budget resumes the previous one's run (cheap; a linear schedule restarts its "
                    "decay at each extension); independent: each budget is a fresh run from the pruned model, its "
                    "rate decaying to 0 by that budget (what a user with that budget gets; costs the sum of budgets)")
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--curve-chunks", type=int, default=16)
    ap.add_argument("--speed-rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the distillation")
    ap.add_argument("--teacher-threads", type=int, default=None, help="llama.cpp threads of the teacher, which "
                    "runs beside the student's step (default: --threads)")
    ap.add_argument("--bytes-ratio", type=float, default=0.68)
    ap.add_argument("--finish-by", default=None, help="HH:MM UTC: shorten the distillation to end the run by then")
    ap.add_argument("--reserve-minutes", type=float, default=30.0, help="with --finish-by: time kept for the rest")
    args = ap.parse_args()

    from edgegen.cli.prune import DISTILL_PLAYS
    from edgegen.distill import DistillConfig, distill
    from edgegen.evaluate.bench import bytes_read_per_token, compare_speed
    from edgegen.evaluate.rounds import Noise, Spread, load_average, median_interval, supported
    from edgegen.formats.convert import cached_reference
    from edgegen.hub.sources import pull
    from edgegen.hub.texts import CALIBRATION_PLAYS, EVALUATION_PLAYS, plays_text
    from edgegen.prune import PruneTarget, prune

    home = args.home
    work = args.work or home / "bench" / "prune_distill"
    work.mkdir(parents=True, exist_ok=True)
    ref = cached_reference(pull("smollm2-135m-instruct", home), home)
    calib = plays_text(home, CALIBRATION_PLAYS)
    evalt = work / "eval.txt"
    evalt.write_text(plays_text(home, EVALUATION_PLAYS))
    load_start = load_average()
    t_start = time.perf_counter()

    files: dict[str, Path] = {}
    for ft in ("Q4_K_M", "Q3_K_M", "Q2_K"):
        files[f"llama.cpp {ft}"] = llama_quantize(ref, work / f"llamacpp-{ft}.gguf", ft, 2)
    log("llama.cpp files ready")
    q4_size = files["llama.cpp Q4_K_M"].stat().st_size
    costs: dict[str, dict] = {}
    files["quant-only@Q4_K_M"] = work / "quant-only-q4km.gguf"
    costs["quant-only@Q4_K_M"] = compress_to(ref, files["quant-only@Q4_K_M"], q4_size, calib)
    a_size = files["quant-only@Q4_K_M"].stat().st_size
    small = int(args.bytes_ratio * a_size)
    log(f"quant-only@Q4_K_M {a_size} bytes; pruned files get {small}")

    pruned = work / "pruned.gguf"
    t0 = time.perf_counter()
    prep = prune(ref, pruned, PruneTarget.parse(args.prune), calib_text=calib)
    costs["prune"] = {"wall_s": round(time.perf_counter() - t0, 1), "plan": prep.plan}
    files["prune+quant"] = work / "prune-quant.gguf"
    files["quant-only@same-size"] = work / "quant-only-same-size.gguf"
    # quantized before the distillation, not beside it: the distillation's minutes get both cores
    costs["prune+quant"] = compress_to(pruned, files["prune+quant"], small, calib)
    costs["quant-only@same-size"] = compress_to(ref, files["quant-only@same-size"], small, calib)

    distill_text = plays_text(home, DISTILL_PLAYS)
    budgets = [float(x) for x in args.curve.split(",")]
    if args.finish_by:  # a shared machine and a deadline: shrink the curve to what is left
        hh, mm = (int(x) for x in args.finish_by.split(":"))
        now = time.gmtime()
        left = (hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min + now.tm_sec / 60) - args.reserve_minutes
        if left < budgets[-1]:
            last = max(2.0, round(left, 1))
            budgets = [round(last / 4, 1), round(last / 2, 1), last]
            log(f"--finish-by {args.finish_by}: distillation curve shrunk to {budgets} minutes")
    cfg = DistillConfig(budget_minutes=budgets[0], lr=args.lr, seq_len=256, checkpoint_minutes=2.0,
                         n_threads=args.threads, teacher_threads=args.teacher_threads, schedule=args.schedule)
    tag = f"{args.schedule}-lr{args.lr:g}"  # a fresh work dir (teacher cache included) per setting
    if args.curve_mode == "independent":
        tag += "-independent"
    curve_files = [(0.0, pruned)]
    dreports = []
    for b in budgets:
        out = work / f"distilled-{tag}-{b:g}min.gguf"
        if not out.exists():
            run_dir = work / (f"distill-{tag}-{b:g}min" if args.curve_mode == "independent" else f"distill-{tag}")
            r = distill(pruned, ref, out, text=distill_text, config=replace(cfg, budget_minutes=b), workdir=run_dir)
            dreports.append({k: v for k, v in r.to_dict().items() if k != "curve"} | {"loss_curve_tail": r.curve[-3:]})
            log(f"distilled {b} min: {r.steps} steps, loss {r.kl_first:.3f} -> {r.kl_last:.3f}")
        curve_files.append((b, out))
    curve_q = quality([p for _, p in curve_files], ref, evalt, args.curve_chunks, 1)
    keys = ("kl_mean", "kl_stderr", "top1_agreement", "ppl")
    curve = [{"minutes": m, "file": str(p), **{k: curve_q[str(p)][k] for k in keys}} for m, p in curve_files]
    final = curve_files[-1][1]
    files["prune+distill+quant"] = work / f"prune-distill-quant-{tag}.gguf"
    costs["prune+distill+quant"] = compress_to(final, files["prune+distill+quant"], small, calib)
    log("all files ready; quality")

    q = quality(list(files.values()), ref, evalt, args.chunks, 1)
    log("speed rounds")
    load_before = load_average()
    # the control: a byte-for-byte copy of the base file, timed as one more file. Every round copies all
    # the files afresh and loads the copies (compare_speed's fresh_dir): loaded once, identical bytes
    # decoded at a steady 0.95x-1.02x of each other, a different figure each run
    # (bench/results/quant_vs_llamacpp.placement-once.json), which the rounds could not see
    control = work / "control-copy-of-quant-only-q4km.gguf"
    shutil.copyfile(files["quant-only@Q4_K_M"], control)
    fresh = work / "fresh-rounds"
    try:
        raw = compare_speed([*files.values(), control], rounds=args.speed_rounds, prompt_tokens=511, gen_tokens=32,
                            n_threads=1, fresh_dir=fresh)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    dec = {name: raw[str(p)]["decode_cpu_ms_per_token"] for name, p in files.items()}
    pre = {name: raw[str(p)]["prefill_cpu_ms_per_token"] for name, p in files.items()}
    base = dec["quant-only@Q4_K_M"]

    def speedup_of(times: list[float], against: list[float]) -> list[float]:
        """against/times round by round: > 1 means faster than ``against``."""
        return [b / x for x, b in zip(times, against, strict=True)]

    control_rounds = speedup_of(raw[str(control)]["decode_cpu_ms_per_token"], base)  # base/copy per round
    control_speed = Spread.of(control_rounds)
    noise = Noise(load_before=load_before, threads=1, cores=os.cpu_count() or 1,
                  max_cv=max(Spread.of(v).cv for v in dec.values()))
    speedup_rounds = {name: speedup_of(dec[name], base) for name in files}
    speedup = {name: Spread.of(v) for name, v in speedup_rounds.items()}
    speedup_ci = {name: median_interval(v) for name, v in speedup_rounds.items()}
    prefill_speedup = {name: speedup_of(pre[name], pre["quant-only@Q4_K_M"]) for name in files}
    rows = {}
    for name, p in files.items():
        rows[name] = {"file": str(p), **q[str(p)], "weight_bytes_per_token": bytes_read_per_token(p),
                      "decode_cpu_ms_per_token": _spread(dec[name]),
                      "decode_speedup_vs_quant_only_q4km": speedup[name].to_dict(),
                      "decode_speedup_rounds": [round(x, 4) for x in speedup_rounds[name]],
                      "decode_speedup_median_ci95": speedup_ci[name].to_dict(),
                      "prefill_cpu_ms_per_token": _spread(pre[name]),
                      "prefill_speedup_vs_quant_only_q4km": _spread(prefill_speedup[name]),
                      "prefill_speedup_median_ci95": median_interval(prefill_speedup[name]).to_dict(),
                      "speedup_supported": supported(speedup[name], noise), "cost": costs.get(name)}
    a, pdq, pq, same = (rows[k] for k in ("quant-only@Q4_K_M", "prune+distill+quant", "prune+quant",
                                          "quant-only@same-size"))
    kl0 = curve[0]["kl_mean"]
    targets = {
        "fewer_bytes_per_token": round(1 - pdq["weight_bytes_per_token"] / a["weight_bytes_per_token"], 4),
        "fewer_bytes_ge_25pct": pdq["weight_bytes_per_token"] <= 0.75 * a["weight_bytes_per_token"],
        "decode_speedup_median": round(speedup["prune+distill+quant"].median, 3),
        "decode_speedup_range": [round(speedup["prune+distill+quant"].low, 3),
                                 round(speedup["prune+distill+quant"].high, 3)],
        "decode_speedup_ge_1.25_all_rounds": speedup["prune+distill+quant"].low >= 1.25,
        "decode_speedup_median_ci95": speedup_ci["prune+distill+quant"].to_dict(),
        "decode_speedup_concluded_ge_1.25": speedup_ci["prune+distill+quant"].low >= 1.25,
        "control_copy_median_ci95": median_interval(control_rounds).to_dict(),
        "speed_noisy": noise.noisy, "noise": noise.to_dict(),
        "control_copy_speedup": control_speed.to_dict(),
        "decode_speedup_low_over_control_high": round(speedup["prune+distill+quant"].low / control_speed.high, 3),
        "kl_distilled_over_pruned_unquantized": round(curve[-1]["kl_mean"] / kl0, 4),
        "distill_kl_le_0.5x": curve[-1]["kl_mean"] <= 0.5 * kl0,
        "kl_pdq_vs_quant_only_same_size": [pdq["kl_mean"], same["kl_mean"]],
        "pdq_beats_quant_only_same_size": pdq["kl_mean"] < same["kl_mean"],
        "kl_pq_vs_pdq": [pq["kl_mean"], pdq["kl_mean"]],
        "projection": fit_crossing(curve, same["kl_mean"]),
    }
    result = {"reference": str(ref), "prune": args.prune, "lr": args.lr, "schedule": args.schedule,
              "curve_mode": args.curve_mode,
              "curve_minutes": budgets, "argv": sys.argv[1:],
              "eval_plays": EVALUATION_PLAYS, "calibration_plays": CALIBRATION_PLAYS, "distill_plays": DISTILL_PLAYS,
              "chunks": args.chunks, "speed_rounds": args.speed_rounds, "load_avg_start": load_start,
              "load_avg_end": os.getloadavg(), "wall_s": round(time.perf_counter() - t_start, 1),
              "rows": rows, "distill_curve": curve, "distill_runs": dreports, "targets": targets}
    out_json = REPO / "bench" / "results" / "prune_distill.json"
    out_json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(result, out_json.with_suffix(".png"))
    print(json.dumps(targets, indent=1))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    for name, r in result["rows"].items():
        colour = "tab:red" if name.startswith("llama.cpp") else "tab:blue" if "quant-only" in name else "tab:green"
        d = r["decode_cpu_ms_per_token"]
        mib = r["file_bytes"] / 2**20
        axes[0].errorbar(d["median"], r["kl_mean"], xerr=[[d["median"] - d["low"]], [d["high"] - d["median"]]],
                         fmt="o", color=colour)
        axes[0].annotate(name, (d["median"], r["kl_mean"]), fontsize=7)
        axes[1].plot(mib, r["kl_mean"], "o", color=colour)
        axes[1].annotate(name, (mib, r["kl_mean"]), fontsize=7)
        axes[2].plot(mib, r["top1_agreement"], "o", color=colour)
        axes[2].annotate(name, (mib, r["top1_agreement"]), fontsize=7)
    axes[0].set(xlabel="decode CPU ms/token (1 thread, median [range])", ylabel="mean KL vs F16", yscale="log")
    axes[1].set(xlabel="file MiB", ylabel="mean KL vs F16", yscale="log")
    axes[2].set(xlabel="file MiB", ylabel="top-1 agreement")
    c = result["distill_curve"]
    axes[3].plot([p["minutes"] for p in c], [p["kl_mean"] for p in c], "o-", color="tab:green",
                 label="pruned, distilled (unquantized)")
    same = result["rows"]["quant-only@same-size"]["kl_mean"]
    axes[3].axhline(same, color="tab:blue", ls="--", label="quant-only at the same size")
    axes[3].set(xlabel="distillation minutes (2 cores)", ylabel="mean KL vs F16", yscale="log")
    axes[3].legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M: prune {result['prune']} + distill vs quantization alone (held-out Shakespeare)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
