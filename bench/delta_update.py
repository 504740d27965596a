"""Bytes on the wire for a model or adapter update: full artifact vs zstd transfer vs binary delta.

Three updates of SmolLM2-135M-Instruct (the only real ~100 MB model here), each a (v1 -> v2) pair:
    (a) requant     the same weights quantized again with another recipe: the F16 reference quantized
                    by llama.cpp to Q4_0 (v1) and to Q4_1 (v2)
    (b) finetune    a fine-tune merged into the weights, then quantized as before: every 2-D weight of
                    the F16 reference gets W += B @ A (rank 16, |BA| ~ 1% of |W|, as a merged LoRA),
                    both sides quantized to Q4_0 (v1 = (a)'s v1)
    (c) adapter     a LoRA adapter for the installed base ((a)'s Q4_0 v1): adapter v1, then (c1) v2 =
                    v1 trained further (factors moved by 10%) and (c2) v2 = a new adapter (new seed);
                    the target: the bytes to ship a new adapter <= 5% of the base model's bytes

For each pair: the full v2, its zstd transfer (level 3, what ``fleet publish`` uploads), the delta the
control plane serves (``edgegen.delta``: zstd --patch-from style, level 9 by default, long-distance
matching)
and, when ``bsdiff4`` is installed, a bsdiff4 patch; times to make and to apply the zstd delta (one
run: the sizes are deterministic, the times are indicative only on this shared machine; the load
average is recorded). Output JSON on stdout and in bench/results/delta_update.json.

    .venv/bin/python bench/delta_update.py [--home DIR] [--no-bsdiff]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def zstd_size(path: Path, level: int = 3) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=level).compress(path.read_bytes()))


def measure(v1: Path, v2: Path, work: Path, bsdiff: bool, level: int, bsdiff_max: int) -> dict[str, Any]:
    from edgegen.delta import apply_delta, make_delta

    out: dict[str, Any] = {"v1": v1.name, "v2": v2.name, "full_bytes": v2.stat().st_size,
                           "zstd3_bytes": zstd_size(v2)}
    patch = work / f"{v1.stem}-{v2.stem}.zpatch"
    t0, c0 = time.perf_counter(), time.process_time()
    out["delta_bytes"] = make_delta(v1, v2, patch, level=level)
    out["delta_level"] = level
    out["delta_make_s"] = round(time.perf_counter() - t0, 2)
    out["delta_make_cpu_s"] = round(time.process_time() - c0, 2)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    apply_delta(v1, patch, buf, v2.stat().st_size)
    out["delta_apply_s"] = round(time.perf_counter() - t0, 2)
    assert buf.getvalue() == v2.read_bytes(), "the delta does not reconstruct v2"
    if bsdiff and v2.stat().st_size > bsdiff_max:
        out["bsdiff4"] = f"skipped: over --bsdiff-max-bytes ({bsdiff_max})"
    elif bsdiff:
        try:
            import bsdiff4
        except ImportError:
            out["bsdiff4"] = "not installed"
        else:
            t0 = time.perf_counter()
            p = bsdiff4.diff(v1.read_bytes(), v2.read_bytes())
            out["bsdiff4_bytes"], out["bsdiff4_make_s"] = len(p), round(time.perf_counter() - t0, 2)
    full_wire = min(out["full_bytes"], out["zstd3_bytes"])
    out["wire_bytes"] = min(full_wire, out["delta_bytes"])  # what the device downloads (fallback: full)
    out["delta_vs_transfer"] = round(out["delta_bytes"] / full_wire, 4)
    return out


def finetuned_reference(ref: Path, out: Path, rank: int = 16, rel: float = 0.01, seed: int = 0) -> Path:
    """``ref`` with a rank-``rank`` update merged into every 2-D block weight (W += B @ A, |BA| ~ rel |W|)."""
    from edgegen.formats import dequant
    from edgegen.formats.gguf_file import field_value, open_reader
    from edgegen.formats.gguf_write import PlannedTensor, write_gguf

    reader = open_reader(ref)
    rng = np.random.default_rng(seed)
    plan = []
    for t in dequant.plan_tensors(reader, "f16"):
        if len(t.shape) == 2 and t.name.startswith("blk."):
            def produce(t: PlannedTensor = t, s: int = int(rng.integers(1 << 30))) -> np.ndarray:
                w = t.produce().astype(np.float32)
                r = np.random.default_rng(s)
                a = r.standard_normal((rank, w.shape[1])).astype(np.float32)
                b = r.standard_normal((w.shape[0], rank)).astype(np.float32)
                ba = b @ a
                ba *= rel * float(np.sqrt((w ** 2).mean())) / float(np.sqrt((ba ** 2).mean()))
                return (w + ba).astype(t.dtype)

            plan.append(PlannedTensor(t.name, t.shape, t.dtype, produce))
        else:
            plan.append(t)
    arch = str(field_value(reader, "general.architecture"))
    return write_gguf(out, arch, dequant.metadata_copier(reader, dequant.file_type_for("f16")), plan)


def moved_adapter(src: Path, out: Path, step: float = 0.1, seed: int = 7) -> Path:
    """``src`` trained further: every LoRA factor moved by ``step`` of its own scale."""
    from edgegen.formats.gguf_file import field_value, open_reader
    from edgegen.formats.lora_gguf import write_lora_gguf

    reader = open_reader(src)
    rng = np.random.default_rng(seed)
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
               for t in reader.tensors}
    pairs = {}
    for name in tensors:
        if name.endswith(".lora_a"):
            base = name[: -len(".lora_a")]
            a, b = tensors[name], tensors[base + ".lora_b"]
            pairs[base] = (a + step * a.std() * rng.standard_normal(a.shape).astype(np.float32),
                           b + step * b.std() * rng.standard_normal(b.shape).astype(np.float32))
    return write_lora_gguf(out, str(field_value(reader, "general.architecture")), pairs,
                           float(field_value(reader, "adapter.lora.alpha")), name="tldr")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--no-bsdiff", action="store_true")
    ap.add_argument("--level", type=int, default=9, help="zstd level of the deltas (the control plane's default)")
    ap.add_argument("--bsdiff-max-bytes", type=int, default=8 << 20,
                    help="bsdiff4 only on smaller files (its suffix sort is slow and needs ~17x the file in RAM)")
    ap.add_argument("--with-f16", action="store_true", help="also diff the unquantized F16 pair (270 MB each)")
    args = ap.parse_args()

    from edgegen.formats.convert import cached_reference
    from edgegen.formats.lora_gguf import random_lora
    from edgegen.hub.sources import pull
    from edgegen.runtime.llamacpp_quant import llamacpp_quantize

    work = args.home / "derived" / "delta_bench"
    work.mkdir(parents=True, exist_ok=True)
    ref = cached_reference(pull("smollm2-135m-instruct", args.home), args.home)

    def made(name: str, fn: Any) -> Path:
        p = work / name
        if not p.exists():
            fn(p)
        return p

    q40 = made("smollm2.Q4_0.gguf", lambda p: llamacpp_quantize(ref, p, "Q4_0"))
    q41 = made("smollm2.Q4_1.gguf", lambda p: llamacpp_quantize(ref, p, "Q4_1"))
    ft_ref = made("smollm2-ft.F16.gguf", lambda p: finetuned_reference(ref, p))
    ft_q40 = made("smollm2-ft.Q4_0.gguf", lambda p: llamacpp_quantize(ft_ref, p, "Q4_0"))
    ad1 = made("tldr-v1.gguf", lambda p: random_lora(q40, p, rank=8, seed=1, name="tldr"))
    ad2 = made("tldr-v2-moved.gguf", lambda p: moved_adapter(ad1, p))
    ad3 = made("tldr-v2-new.gguf", lambda p: random_lora(q40, p, rank=8, seed=2, name="tldr"))

    bsdiff = not args.no_bsdiff
    m = {"work": work, "bsdiff": bsdiff, "level": args.level, "bsdiff_max": args.bsdiff_max_bytes}
    cases = {
        "c1_adapter_trained_further": measure(ad1, ad2, **m),
        "c2_adapter_new": measure(ad1, ad3, **m),
        "a_requant_q4_0_to_q4_1": measure(q40, q41, **m),
        "b_finetune_merged_q4_0": measure(q40, ft_q40, **m),
    }
    if args.with_f16:
        cases["b_finetune_merged_f16"] = measure(ref, ft_ref, **{**m, "bsdiff": False})
    base_bytes = q40.stat().st_size
    for key in ("c1_adapter_trained_further", "c2_adapter_new"):
        c = cases[key]
        c["wire_vs_base"] = round(c["wire_bytes"] / base_bytes, 4)
        c["target_le_5pct_of_base"] = c["wire_bytes"] <= 0.05 * base_bytes
    result = {
        "bench": "delta_update", "base_model": "SmolLM2-135M-Instruct", "base_bytes": base_bytes,
        "cases": cases, "loadavg": os.getloadavg(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    text = json.dumps(result, indent=1)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "delta_update.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
