"""The main job (``make demo``): one model from download to a measured, compressed, chatting file.

Steps: pull the default model; dequantize it to the F16 reference; compress the reference (edgegen's
quantizer when available, and llama.cpp's Q4_K_M as the anchor); evaluate every variant against the
reference on held-out text; bench each; write ``report.md``, ``report.json`` and a PNG plot; answer a
chat prompt with the compressed model. With ``prune_distill`` (off by default: on 2 cores it adds more
than the 20-minute demo can hold), one more variant:
the reference pruned to ``PRUNE_DISTILL_TARGET`` of its block weights, distilled from it for
``PRUNE_DISTILL_MINUTES`` (a short budget, stated in the report; the full-budget figures come from
``bench/prune_distill.py``) and quantized at the same size and decode-cost budget as edgegen's row.
Intermediate files are reused when present (delete ``out/`` to start over). This module orchestrates;
the measuring and converting live elsewhere.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgegen.config import get_settings
from edgegen.errors import OutputError

CHAT_PROMPT = "What is the capital of France?"
EVAL_CHUNKS = 8
SPEED_ROUNDS = 3  # interleaved rounds per variant (each a fresh process)
PRUNE_DISTILL_TARGET = "keep=0.75"  # a quarter of the block weights go (FFN width first)
PRUNE_DISTILL_MINUTES = 1.5
PRUNED_LABEL = "edgegen pruned+distilled"


def _speed(b: Any) -> dict[str, Any]:
    """The spread figures of one BenchReport that the report and plot show."""
    return {"decode_spread": b.decode_spread, "ttft_spread": b.ttft_spread,
            "decode_ratio_to_anchor": b.decode_ratio_to_first}


def _compress_ours(ref: Path, out: Path, anchor: Path, calib: Path, log: Callable[[str], None]) -> Path | None:
    """edgegen's calibrated quantizer at no more than the anchor's size and decode cost, if the
    compression capability is installed."""
    try:
        from edgegen.compress.pipeline import Budget, compress
    except ImportError:  # the [compress] extra (torch) is not installed: a device-only install
        log("edgegen's quantizer needs the [compress] extra; comparing llama.cpp's only")
        return None
    budget = Budget.of(max_size_mib=anchor.stat().st_size / 2**20, speed_of=anchor)
    report = compress(ref, out, budget=budget, calib=calib)
    (out.parent / "edgegen-compress.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return out


def _prune_distill(ref: Path, out: Path, anchor: Path, calib: Path, minutes: float,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Prune -> distill -> quantize (``compress.staged``) at the anchor's size and decode cost; returns
    what the report states about it (kept in ``<out>.json`` so a rerun reuses the file)."""
    facts = out.with_suffix(".json")
    if out.exists() and facts.exists():
        return json.loads(facts.read_text())
    from edgegen.compress.pipeline import Budget
    from edgegen.compress.staged import compress_staged
    from edgegen.distill import DistillConfig
    from edgegen.hub.texts import DISTILL_PLAYS, plays_text
    from edgegen.prune import PruneTarget

    log(f"      pruning to {PRUNE_DISTILL_TARGET} and distilling for {minutes} min")
    t0 = time.perf_counter()
    work = out.with_name(out.stem + ".stages")  # pruned and distilled F16 files, checkpoint: ~1.4 GB for SmolLM2
    staged = compress_staged(
        ref, out, prune_target=PruneTarget.parse(PRUNE_DISTILL_TARGET), distill_minutes=minutes,
        budget=Budget.of(max_size_mib=anchor.stat().st_size / 2**20, speed_of=anchor),
        calib_text=calib.read_text(), distill_text=plays_text(get_settings().home, DISTILL_PLAYS),
        # a short budget affords few steps: warm up over 2 of them, not the default 10 (lr as bench/prune_distill)
        distill_config=DistillConfig(budget_minutes=minutes, lr=3e-4, warmup_steps=2), workdir=work)
    shutil.rmtree(work, ignore_errors=True)  # the report needs only the final file and these facts
    dist = staged.distill or {}
    data = {"target": PRUNE_DISTILL_TARGET, "distill_minutes": minutes,
            "block_weights_kept": staged.prune["plan"]["block_weights_kept"],
            "layers_kept": staged.prune["plan"]["kept"]["n_layer"], "ffn_width": staged.prune["plan"]["ffn_width"],
            "distill_steps": dist.get("steps"), "distill_kl_first": dist.get("kl_first"),
            "distill_kl_last": dist.get("kl_last"), "stage_seconds": round(time.perf_counter() - t0, 1)}
    facts.write_text(json.dumps(data, indent=2) + "\n")
    return data


def run_demo(out: Path, *, model: str | None = None, text: Path | None = None, with_edgegen: bool = True,
             prune_distill: bool = False, distill_minutes: float = PRUNE_DISTILL_MINUTES,
             log: Callable[[str], None] = lambda _m: None) -> Path:
    """``with_edgegen=False`` compares llama.cpp's quantizer alone (no torch needed, a few minutes less);
    ``prune_distill=True`` adds the pruned+distilled variant (several minutes more; module docstring)."""
    from edgegen.evaluate.bench import measure_bandwidth, run_bench_many
    from edgegen.evaluate.quality import evaluate_many
    from edgegen.evaluate.rounds import idle_cores
    from edgegen.formats.convert import convert_model
    from edgegen.hub.sources import DEFAULT_MODEL, pull
    from edgegen.hub.texts import CALIBRATION_PLAYS, EVALUATION_PLAYS, plays_text
    from edgegen.report.plots import plot_size_quality_speed
    from edgegen.runtime.engine import Engine, SamplingParams, default_threads
    from edgegen.runtime.llamacpp_quant import llamacpp_quantize

    settings = get_settings()
    t_start = time.perf_counter()
    try:
        models_dir = out / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from exc

    log(f"[1/6] pulling {model or DEFAULT_MODEL}")
    source = pull(model or DEFAULT_MODEL, settings.home)

    log("[2/6] making the F16 reference")
    ref = models_dir / "reference-F16.gguf"
    if not ref.exists():
        convert_model(source, ref, dtype="f16")

    calib = out / "calibration.txt"
    calib.write_text(plays_text(settings.home, CALIBRATION_PLAYS))
    if text is None:
        text = out / "evaluation.txt"
        text.write_text(plays_text(settings.home, EVALUATION_PLAYS))

    log("[3/6] compressing: llama.cpp Q4_K_M" + (" and edgegen at no larger size" if with_edgegen else ""))
    anchor = models_dir / "llamacpp-Q4_K_M.gguf"
    if not anchor.exists():
        llamacpp_quantize(ref, anchor, "Q4_K_M")
    ours = models_dir / "edgegen.gguf"
    have_ours = with_edgegen and (
        ours.exists() or _compress_ours(ref, ours, anchor, calib, log) is not None)

    variants = {"publisher Q4_1": source, "llama.cpp Q4_K_M": anchor}
    if have_ours:
        variants["edgegen"] = ours
    pruned_facts = None
    if have_ours and prune_distill:
        pruned = models_dir / "edgegen-pruned-distilled.gguf"
        pruned_facts = _prune_distill(ref, pruned, anchor, calib, distill_minutes, log)
        variants[PRUNED_LABEL] = pruned

    log(f"[4/6] evaluating {len(variants)} variants against the reference ({EVAL_CHUNKS} chunks of 512 tokens)")
    quality = evaluate_many(list(variants.values()), ref, text, max_chunks=EVAL_CHUNKS)

    log("[5/6] benchmarking")
    # interleaved rounds on at most the idle cores; the anchor first, so every ratio is to it
    threads = min(settings.engine.n_threads or default_threads(), idle_cores())
    bw = measure_bandwidth(threads)
    order = [("llama.cpp Q4_K_M", anchor), ("reference F16", ref),
             *[(k, v) for k, v in variants.items() if k != "llama.cpp Q4_K_M"]]
    measured = run_bench_many([p for _, p in order], n_threads=threads, bandwidth=bw, rounds=SPEED_ROUNDS)
    benches = {label: b for (label, _), b in zip(order, measured)}
    threads = measured[0].n_threads

    log("[6/6] chatting with every variant (greedy)")
    answers, first = {}, {}
    msg = [{"role": "user", "content": CHAT_PROMPT}]
    for label, path in [("reference F16", ref), *variants.items()]:
        with Engine(path, n_ctx=512, logits_all=True) as engine:
            answers[label] = engine.chat(msg, SamplingParams.greedy(48)).text.strip()
            first[label] = _first_token_odds(engine, msg)

    rows = []
    for (label, path), q in zip(variants.items(), quality):
        b = benches[label]
        rows.append({"label": label, "path": str(path), **{k: q.to_dict()[k] for k in (
            "file_bytes", "bits_per_weight", "ppl", "kl_mean", "kl_stderr", "kl_p99", "top1_agreement")},
            "decode_tokens_per_s": b.decode_tokens_per_s, "prefill_tokens_per_s": b.prefill_tokens_per_s,
            "ttft_s": b.ttft_s, "peak_rss_bytes": b.peak_rss_bytes,
            "decode_bandwidth_efficiency": b.decode_bandwidth_efficiency, **_speed(b)})
    rb = benches["reference F16"]
    rows.insert(0, {"label": "reference F16", "path": str(ref), "file_bytes": rb.file_bytes,
                    "bits_per_weight": None, "ppl": quality[0].ppl_ref, "kl_mean": 0.0, "kl_stderr": 0.0,
                    "kl_p99": 0.0, "top1_agreement": 1.0, "decode_tokens_per_s": rb.decode_tokens_per_s,
                    "prefill_tokens_per_s": rb.prefill_tokens_per_s, "ttft_s": rb.ttft_s,
                    "peak_rss_bytes": rb.peak_rss_bytes,
                    "decode_bandwidth_efficiency": rb.decode_bandwidth_efficiency, **_speed(rb)})
    noise = measured[0].noise
    plot = plot_size_quality_speed(rows, out / "size_quality_speed.png", noise=noise, baseline="llama.cpp Q4_K_M")
    data = {"source": str(source), "reference": str(ref), "eval_text": str(text),
            "eval_chunks": quality[0].n_chunks, "tokens_scored": quality[0].n_tokens_scored,
            "mem_bandwidth_bytes_per_s": round(bw), "threads": threads, "machine": platform.machine(),
            "speed_rounds": SPEED_ROUNDS, "speed_noise": noise,
            "chat": {"prompt": CHAT_PROMPT, "answers": answers, "first_token_top3": first},
            "variants": rows, "prune_distill": pruned_facts, "elapsed_s": round(time.perf_counter() - t_start, 1)}
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    report = out / "report.md"
    report.write_text(_markdown(data, plot.name))
    return report


def _first_token_odds(engine: Any, messages: list[dict[str, str]], k: int = 3) -> list[tuple[str, float]]:
    """The k likeliest first tokens of the assistant's answer, with their probabilities."""
    import numpy as np

    tokens, _ = engine.chat_tokens(messages)
    logits = engine.logits(tokens)[-1].astype(np.float64)
    p = np.exp(logits - np.logaddexp.reduce(logits))
    top = np.argsort(-p)[:k]
    return [(engine.detokenize([int(t)]), round(float(p[t]), 4)) for t in top]


def _speed_note(d: dict) -> list[str]:
    noise = d.get("speed_noise") or {}
    head = (f"Speed: {d.get('speed_rounds', 1)} interleaved rounds per variant (fresh process each), "
            f"{d['threads']} of {noise.get('cores', '?')} cores, load average {noise.get('load_before', 0):.2f} "
            "before the run; figures are medians with their range.")
    if noise.get("noisy"):
        return [head, "", "**Noisy: the machine was too busy to compare speeds; no speed difference is claimed** "
                f"({'; '.join(noise.get('reasons', []))})."]
    return [head, "A ratio marked ≈ is within the spread: no difference is claimed."]


def _spread_text(r: dict) -> str:
    s = r.get("decode_spread")
    return f"{s['median']:.1f} [{s['low']:.1f}-{s['high']:.1f}]" if s else f"{r['decode_tokens_per_s']:.1f}"


def _ratio_text(r: dict, d: dict) -> str:
    from edgegen.evaluate.rounds import Noise, Spread, supported

    raw = r.get("decode_ratio_to_anchor")
    noise = d.get("speed_noise")
    if not raw or not noise:
        return "-"
    ratio = Spread(**raw)
    n = Noise(**{k: noise[k] for k in ("load_before", "threads", "cores", "max_cv", "cv_threshold")})
    mark = "" if supported(ratio, n) else "≈ "
    return f"{mark}{ratio.median:.2f}x [{ratio.low:.2f}-{ratio.high:.2f}]"


def _pruned_note(p: dict) -> str:
    steps = p.get("distill_steps") or 0
    kl = (f"; training KL {p['distill_kl_first']:.3f} -> {p['distill_kl_last']:.3f} (means of the first and "
          f"last 10 of {steps} steps)" if steps >= 20 else f"; {steps} training steps")
    return (f"**{PRUNED_LABEL}**: the reference pruned to {p['block_weights_kept']:.0%} of its block weights "
            f"({p['layers_kept']} blocks, FFN width {p['ffn_width']}; `{p['target']}`), distilled from it for only "
            f"{p['distill_minutes']} minutes on this machine{kl}, then quantized at the same size and decode-cost "
            "budget as the edgegen row. A short budget for the demo's sake: the figures after a full "
            "distillation (up to 30 minutes) come from `bench/prune_distill.py`.")


def _markdown(d: dict, plot_name: str) -> str:
    lines = [
        "# edgegen report",
        "",
        f"Source model: `{d['source']}`; reference: its F16 dequantization. Quality measured on "
        f"{d['tokens_scored']} held-out tokens ({d['eval_chunks']} chunks of 512, second half of each scored, "
        "as llama-perplexity --kl-divergence); speed at batch 1 with "
        f"{d['threads']} threads; read bandwidth {d['mem_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s.",
        "",
        *_speed_note(d),
        "",
        "| variant | size (MiB) | bpw | PPL | mean KL | KL p99 | top-1 | decode tok/s (median [low-high]) "
        "| decode vs Q4_K_M (same rounds) | prefill tok/s | TTFT s | peak RSS (MiB) | bw. eff. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["variants"]:
        bpw = f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] else "16"
        lines.append(
            f"| {r['label']} | {r['file_bytes'] / 2**20:.1f} | {bpw} | {r['ppl']:.3f} | {r['kl_mean']:.4f} "
            f"± {r['kl_stderr']:.4f} | {r['kl_p99']:.3f} | {100 * r['top1_agreement']:.1f}% | "
            f"{_spread_text(r)} | {_ratio_text(r, d)} | {r['prefill_tokens_per_s']:.0f} | {r['ttft_s']:.3f} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['decode_bandwidth_efficiency']:.2f} |")
    if d.get("prune_distill"):
        lines += ["", _pruned_note(d["prune_distill"])]
    c = d["chat"]
    lines += ["", f"![size, quality and speed]({plot_name})", "", "## Chat", "",
              f"**user:** {c['prompt']}", "", "| variant | assistant (greedy, 48 tokens at most) |", "|---|---|"]
    for label, answer in c["answers"].items():
        lines.append(f"| {label} | {answer.replace(chr(10), ' ').replace('|', '/')} |")
    lines += ["", "Greedy answers part ways wherever the first choices are nearly tied; each variant's three "
              "likeliest first tokens:", "", "| variant | first token: probability |", "|---|---|"]
    for label, odds in c["first_token_top3"].items():
        lines.append(f"| {label} | " + ", ".join(f"`{t!r}` {p:.3f}" for t, p in odds).replace("|", "/") + " |")
    lines += ["", f"Total time: {d['elapsed_s']} s.", ""]
    return "\n".join(lines)
