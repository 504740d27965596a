"""Report plots (matplotlib, headless): size vs KL divergence, and decode speed per model."""

from __future__ import annotations

from pathlib import Path


def speed_bars(rows: list[dict], noise: dict | None, baseline: str | None) -> list[dict]:
    """What the speed panel may draw: one entry per row with label, median, low, high and ``supported``
    (its difference from ``baseline`` holds in every round on a quiet machine). Empty when the machine
    was noisy: then no bar is drawn at all. Pure, so the rule is tested without matplotlib."""
    from edgegen.evaluate.rounds import Noise, Spread, supported

    if noise is not None and noise.get("noisy"):
        return []
    n = Noise(**{k: noise[k] for k in ("load_before", "threads", "cores", "max_cv", "cv_threshold")}) if noise else None
    bars = []
    for r in rows:
        s = r.get("decode_spread") or {"median": r["decode_tokens_per_s"], "low": r["decode_tokens_per_s"],
                                       "high": r["decode_tokens_per_s"]}
        ratio = r.get("decode_ratio_to_anchor")
        ok = r["label"] == baseline or (n is not None and ratio is not None and supported(Spread(**ratio), n))
        bars.append({"label": r["label"], "median": s["median"], "low": s["low"], "high": s["high"],
                     "supported": bool(ok)})
    return bars


def plot_size_quality_speed(rows: list[dict], out: Path, *, noise: dict | None = None,
                            baseline: str | None = None) -> Path:
    """``rows``: dicts with label, file_bytes, kl_mean, top1_agreement, decode_tokens_per_s and, from
    interleaved rounds, decode_spread / decode_ratio_to_anchor. Speed bars carry their range; a bar whose
    difference from ``baseline`` the spread does not support is drawn hollow and marked "≈"; on a noisy
    machine the panel draws no bars and says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        mib = r["file_bytes"] / 2**20
        ax1.scatter(mib, max(r["kl_mean"], 1e-5), s=60)
        ax1.annotate(r["label"], (mib, max(r["kl_mean"], 1e-5)), textcoords="offset points", xytext=(6, 4),
                     fontsize=8)
    ax1.set_yscale("log")
    ax1.set_xlabel("file size (MiB)")
    ax1.set_ylabel("mean KL divergence from F16 reference (log)")
    ax1.set_title("size vs quality (lower-left is better)")
    ax1.grid(True, which="both", alpha=0.3)

    bars = speed_bars(rows, noise, baseline)
    ax2.set_title("decode speed (median, range over rounds)")
    if not bars:
        reasons = "; ".join((noise or {}).get("reasons", []))
        ax2.text(0.5, 0.5, "machine too noisy to compare speeds\n" + reasons, ha="center", va="center",
                 wrap=True, fontsize=9, transform=ax2.transAxes)
        ax2.set_axis_off()
    else:
        for i, b in enumerate(bars):
            err = [[b["median"] - b["low"]], [b["high"] - b["median"]]]
            ax2.barh(i, b["median"], xerr=err, capsize=3, color="#4c72b0" if b["supported"] else "none",
                     edgecolor="#4c72b0", hatch=None if b["supported"] else "//")
            mark = "" if b["supported"] else " ≈ " + (baseline or "")
            ax2.text(b["high"], i, f" {b['median']:.1f}{mark}", va="center", fontsize=8)
        ax2.set_yticks(range(len(bars)), [b["label"] for b in bars])
        ax2.set_xlabel("decode tokens/s (batch 1, this machine)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
