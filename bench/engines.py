"""SmolLM2 through both engines at comparable size: int4 ONNX (ONNX Runtime GenAI) against edgegen's and
llama.cpp's ~4.5-bit GGUF. Prints JSON (and writes it with --json-out).

    .venv/bin/python bench/engines.py [--home DIR] [--out DIR] [--rounds 5] [--chunks 8]

Variants, all made from the Foundation's F16 reference (SmolLM2-135M-Instruct dequantized by
``formats.convert.cached_reference``):
  - ``ort-int4``: ``edgegen export onnx REF --precision int4`` (ONNX Runtime GenAI's builder, MatMulNBits
    block 32, symmetric round-to-nearest; the embedding table stays as the builder writes it);
  - ``llamacpp-q4_0`` and ``llamacpp-q4_k_m``: ``llama_cpp.llama_model_quantize`` of the reference;
  - ``publisher-q4_1``: the publisher's own Q4_1 file (the reference's grid: see DATA.md);
  - ``edgegen-4.5bpw``: ``edgegen compress REF --bpw 4.5`` (calibrated on the default plays; --no-edgegen skips it).
Quality: ``evaluate.quality.evaluate_many`` against the reference on the same tokens (the
reference's tokenization of Hamlet and Twelfth Night, chunks of 512): mean KL divergence, top-1.
Speed: ``plan.measure.measure_run`` in a fresh process per variant per round, variants interleaved
(rotating order each round); one thread; decode as CPU ms/token (robust to other load) and wall
tok/s, prefill tok/s from the time to first token of a 128-token prompt, peak RSS, load time.
Ratios to ``ort-int4`` are taken within each round; medians with low..high. A spread whose ranges
overlap is reported as such in ``verdict``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_variants(ref: Path, q4_1: Path, out: Path, with_edgegen: bool = True) -> dict[str, Path]:
    from edgegen.export.onnx_genai import Precision, export_onnx
    from edgegen.runtime.llamacpp_quant import llamacpp_quantize

    out.mkdir(parents=True, exist_ok=True)
    v: dict[str, Path] = {}
    onnx = out / "ort-int4"
    if not (onnx / "genai_config.json").is_file():
        export_onnx(ref, onnx, Precision.INT4)
    v["ort-int4"] = onnx
    for ft in ("Q4_0", "Q4_K_M"):
        dst = out / f"llamacpp-{ft.lower()}.gguf"
        if not dst.exists():
            llamacpp_quantize(ref, dst, ft)
        v[f"llamacpp-{ft.lower()}"] = dst
    v["publisher-q4_1"] = q4_1  # the file SmolLM2's publisher ships (4.5 bits per weight)
    ours = out / "edgegen-4.5bpw.gguf"
    if not with_edgegen:
        return v
    if not ours.exists():
        subprocess.run([sys.executable, "-m", "edgegen", "compress", str(ref), "-o", str(ours), "--bpw", "4.5"],
                       check=True)
    v["edgegen-4.5bpw"] = ours
    return v


def _spread(values: list[float]) -> dict[str, float]:
    from edgegen.evaluate.rounds import Spread

    return Spread.of(values).to_dict()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "bench-engines")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--no-edgegen", action="store_true", help="skip edgegen's 4.5-bpw file (its compression takes "
                    "minutes; on a loaded machine, tens of minutes)")
    args = ap.parse_args()

    from edgegen.evaluate.quality import evaluate_many
    from edgegen.formats.convert import cached_reference
    from edgegen.hub.sources import pull
    from edgegen.hub.texts import EVALUATION_PLAYS, plays_text
    from edgegen.plan.facts import model_facts
    from edgegen.plan.measure import measure_run

    q4_1 = pull("smollm2-135m-instruct", args.home)
    ref = cached_reference(q4_1, args.home)
    variants = make_variants(ref, q4_1, args.out, with_edgegen=not args.no_edgegen)
    names = list(variants)

    text = args.out / "eval.txt"
    if not text.exists():
        text.write_text(plays_text(args.home, EVALUATION_PLAYS))
    t0 = time.time()
    reports = evaluate_many([variants[n] for n in names], ref, text, chunk_tokens=512, max_chunks=args.chunks)
    quality = {n: {k: r.to_dict()[k] for k in ("file_bytes", "bits_per_weight", "n_params", "kl_mean", "kl_stderr",
                                               "kl_p99", "top1_agreement", "top1_stderr", "n_tokens_scored")}
               for n, r in zip(names, reports, strict=True)}
    quality_s = time.time() - t0

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            runs[n].append(measure_run(variants[n], n_ctx=512, n_prompt=128, n_gen=64, threads=1, repeats=1))
    speed = {}
    for n in names:
        rs = runs[n]
        speed[n] = {
            "decode_cpu_ms_per_token": _spread([x["decode_cpu_ms"] for x in rs]),
            "decode_tok_s_wall": _spread([1e3 / x["decode_wall_ms"] for x in rs]),
            "prefill_tok_s": _spread([128 / x["ttft_s"] for x in rs]),
            "peak_rss_mib": _spread([x["peak_rss_bytes"] / 2**20 for x in rs]),
            "load_s": _spread([x["load_s"] for x in rs]),
            "decode_cpu_ratio_to_ort_int4": _spread([x["decode_cpu_ms"] / o["decode_cpu_ms"]
                                                    for x, o in zip(rs, runs["ort-int4"], strict=True)]),
            "prefill_ratio_to_ort_int4": _spread([o["ttft_s"] / x["ttft_s"]  # >1: this variant prefills faster
                                                 for x, o in zip(rs, runs["ort-int4"], strict=True)]),
            "variant": model_facts(variants[n]).variant,
        }
    fastest = min(names, key=lambda n: speed[n]["decode_cpu_ms_per_token"]["median"])
    ratios = {n: speed[n]["decode_cpu_ratio_to_ort_int4"] for n in names if n != "ort-int4"}
    clear = all(r["low"] > 1.0 for r in ratios.values()) or all(r["high"] < 1.0 for r in ratios.values())
    verdict = (f"{fastest} decodes fastest (one thread, CPU time per token); every round agrees on the ort-int4 "
               "comparison" if clear else
               f"{fastest} has the lowest median decode cost, but per-round ratios to ort-int4 straddle 1 for some "
               "variants: the spread does not support a ranking between those")
    result = {"reference": str(ref), "text": "Hamlet + Twelfth Night (EVALUATION_PLAYS)", "chunks": args.chunks,
              "rounds": args.rounds, "threads": 1, "cpus": os.cpu_count(), "load_avg_before": load_before,
              "load_avg_after": os.getloadavg(), "quality_s": round(quality_s, 1),
              "quality": quality, "speed": speed, "fastest_decode": fastest, "verdict": verdict}
    text_out = json.dumps(result, indent=1)
    print(text_out)
    if args.json_out:
        args.json_out.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
