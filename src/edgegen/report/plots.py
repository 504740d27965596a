"""Report plots (matplotlib, headless): size vs KL divergence, and decode speed per model."""

from __future__ import annotations

from pathlib import Path


def plot_size_quality_speed(rows: list[dict], out: Path) -> Path:
    """``rows``: dicts with label, file_bytes, kl_mean, top1_agreement, decode_tokens_per_s."""
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

    labels = [r["label"] for r in rows]
    speeds = [r["decode_tokens_per_s"] for r in rows]
    ax2.barh(labels, speeds, color="#4c72b0")
    ax2.set_xlabel("decode tokens/s (batch 1, this machine)")
    ax2.set_title("decode speed")
    for i, v in enumerate(speeds):
        ax2.text(v, i, f" {v:.1f}", va="center", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
