"""Decode cost of each block format under llama.cpp on this CPU: the constants of ``compress.speed``.

    .venv/bin/python bench/format_speed.py [--home DIR] [--out DIR] [--rounds 6] [--tokens 64]

Writes SmolLM2-135M (the Foundation's F16 reference) once per format with every weight matrix in that
format (plain round-to-nearest; the values do not change the kernels' speed). The 256-wide k-quants
fit only the FFN down projections (1536 columns), so their files hold those in the k-quant and the
rest in Q4_0. The files are then decoded in turn for several rounds (``evaluate.bench.compare_decode``:
greedy, 64 tokens, each file's best; one thread, CPU time per token, and two threads, wall-clock
decode rate).

Per-weight cost, ns: an all-X file gives ``T_X / N`` (N the weights read per token: every matrix,
and the embedding once as the tied output); a k-quant file gives ``k_Q4_0 + (T - T_Q4_0) / N_down``.
The per-token work outside the matrices (attention over the context, norms, sampling) is spread
evenly over all weights: every complete plan of one model reads the same N weights, so that share
is the same for any two plans and comparisons between them are exact under the additive model.
Prints JSON: per format, ms/token at one and two threads and the fitted ns per weight. Run on a target
device, that JSON is its speed profile: ``edgegen compress ... --speed-of FILE --speed-profile JSON``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FULL = ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "F32")
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def write_in_format(ref: Path, out: Path, qtype: str, base: str = "Q4_0") -> Path:
    """Every matrix that ``qtype`` can hold in ``qtype``, the others in ``base``; plain rounding."""
    from edgegen.compress.blocks import storage_type
    from edgegen.compress.gguf_out import write_quantized
    from edgegen.compress.plan import SourceModel
    from edgegen.formats.gguf_file import field_value, open_reader

    if out.exists():
        return out
    reader = open_reader(ref)
    model = SourceModel(reader)
    picks = {n: qtype if storage_type(qtype).fits(model.shapes[n][1]) else base for n in model.matrices}
    plan = model.out_plan(picks)

    def produce(t):  # noqa: ANN001, ANN202
        qt = storage_type(t.qtype)
        W = model.weight(t.name)
        if t.name not in picks:
            return W.astype(np.float32)
        if qt.name in ("F16", "F32"):
            return qt.quantize(W)
        blocks = W.reshape(-1, qt.block)
        grid = qt.fit_rtn(blocks)
        return qt.pack(qt.block_codes(blocks, grid), grid).reshape(W.shape[0], -1)

    arch = str(field_value(reader, "general.architecture", "llama"))
    return write_quantized(out, reader, arch, plan, produce)


def time_decode(files: dict[str, Path], rounds: int, tokens: int) -> dict[str, dict[str, float]]:
    from edgegen.evaluate.bench import compare_decode

    timings = compare_decode(list(files.values()), rounds=rounds, tokens=tokens, threads=(1, 2))
    return {k: {"ms_per_token_1thread_cpu": timings[str(p)][1]["cpu_ms_per_token"],
                "ms_per_token_2threads_wall": 1e3 / timings[str(p)][2]["decode_tokens_per_s"]}
            for k, p in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "bench-format-speed")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()

    from edgegen.compress.plan import SourceModel
    from edgegen.formats.convert import cached_reference
    from edgegen.formats.gguf_file import open_reader, read_per_token
    from edgegen.hub.sources import pull

    ref = cached_reference(pull("smollm2-135m-instruct", args.home), args.home)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {q: write_in_format(ref, args.out / f"{q}.gguf", q) for q in (*FULL, *KQUANTS)}
    times = time_decode(files, args.rounds, args.tokens)

    model = SourceModel(open_reader(ref))
    names = set(model.shapes)
    n_read = sum(int(np.prod(model.shapes[n])) for n in model.matrices if read_per_token(n, names))
    n_down = sum(int(np.prod(model.shapes[n])) for n in model.matrices if n.endswith("ffn_down.weight"))
    out: dict[str, dict[str, float]] = {}
    for q, t in times.items():
        row = {k: round(v, 3) for k, v in t.items()}
        for key, short in (("ms_per_token_1thread_cpu", "ns_per_weight_1thread"),
                           ("ms_per_token_2threads_wall", "ns_per_weight_2threads")):
            if q in KQUANTS:
                base = times["Q4_0"][key] * 1e6 / n_read
                row[short] = round(base + (t[key] - times["Q4_0"][key]) * 1e6 / n_down, 4)
            else:
                row[short] = round(t[key] * 1e6 / n_read, 4)
        out[q] = row
    print(json.dumps({"reference": str(ref), "weights_read_per_token": n_read, "ffn_down_weights": n_down,
                      "rounds": args.rounds, "tokens": args.tokens, "cpus": os.cpu_count(),
                      "load_avg_at_end": os.getloadavg(), "formats": out}, indent=1))


if __name__ == "__main__":
    main()
