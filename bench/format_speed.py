"""Decode and prefill cost of each block format under llama.cpp on this CPU: the constants of ``compress.speed``.

    .venv/bin/python bench/format_speed.py [--home DIR] [--out DIR] [--rounds 5] [--prompt 511] [--tokens 32]

Writes SmolLM2-135M (the Foundation's F16 reference) once per format with every weight matrix in that
format (plain round-to-nearest; the values do not change the kernels' speed). The 256-wide k-quants
fit only the FFN down projections (1536 columns), so their files hold those in the k-quant and the
rest in Q4_0. The files then run in interleaved rounds (``evaluate.bench.compare_speed``: one thread,
process CPU time; each round prefills a ``--prompt``-token prompt from an empty context and decodes
``--tokens`` greedy tokens with every file in turn, the order rotated each round). Per file: the median
and spread over rounds of CPU ms per prompt token (prefill) and per generated token (decode).

Per-weight cost, ns: an all-X file gives ``T_X / N`` (N the weights read per token: for decode every
matrix and the embedding once as the tied output; for prefill every matrix but the output, which
llama.cpp applies to the last prompt token only); a k-quant file gives ``k_Q4_0 + (T - T_Q4_0) / N_down``.
The per-token work outside the matrices (attention over the context, norms, sampling) is spread
evenly over all weights: every complete plan of one model reads the same N weights, so that share
is the same for any two plans and comparisons between them are exact under the additive model.
Prints JSON: per format, the medians and spreads and the fitted ns per weight (``ns_per_weight_1thread``
for decode, ``prefill_ns_per_weight_1thread``). Run on a target device, that JSON is its speed
profile: ``edgegen compress ... --speed-of FILE --speed-profile JSON``.
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


def _spread(values: list[float]) -> dict[str, float]:
    """Median, low, high, coefficient of variation and count (``evaluate.rounds.Spread``)."""
    from edgegen.evaluate.rounds import Spread

    return Spread.of(values).to_dict()


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


def time_formats(files: dict[str, Path], rounds: int, prompt: int, tokens: int) -> dict[str, dict]:
    from edgegen.evaluate.bench import compare_speed

    raw = compare_speed(list(files.values()), rounds=rounds, prompt_tokens=prompt, gen_tokens=tokens, n_threads=1)
    return {k: {key: _spread(raw[str(p)][key]) for key in ("decode_cpu_ms_per_token", "prefill_cpu_ms_per_token")}
            for k, p in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "bench-format-speed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=511)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--formats", default=",".join((*FULL, *KQUANTS)))
    args = ap.parse_args()

    from edgegen.compress.plan import SourceModel
    from edgegen.compress.speed import host_cpu_kind, read_per_prompt_token
    from edgegen.formats.convert import cached_reference
    from edgegen.formats.gguf_file import open_reader, read_per_token
    from edgegen.hub.sources import pull

    ref = cached_reference(pull("smollm2-135m-instruct", args.home), args.home)
    args.out.mkdir(parents=True, exist_ok=True)
    formats = args.formats.split(",")
    if any(q in KQUANTS for q in formats) and "Q4_0" not in formats:
        formats.insert(0, "Q4_0")  # the k-quant fits need it
    files = {q: write_in_format(ref, args.out / f"{q}.gguf", q) for q in formats}
    load_start = os.getloadavg()
    times = time_formats(files, args.rounds, args.prompt, args.tokens)

    model = SourceModel(open_reader(ref))
    names = set(model.shapes)
    n_decode = sum(int(np.prod(model.shapes[n])) for n in model.matrices if read_per_token(n, names))
    n_prefill = sum(int(np.prod(model.shapes[n])) for n in model.matrices if read_per_prompt_token(n))
    n_down = sum(int(np.prod(model.shapes[n])) for n in model.matrices if n.endswith("ffn_down.weight"))
    out: dict[str, dict] = {}
    for q, t in times.items():
        row: dict = {k: {s: round(v, 4) for s, v in d.items()} for k, d in t.items()}
        for key, short, n_read in (("decode_cpu_ms_per_token", "ns_per_weight_1thread", n_decode),
                                   ("prefill_cpu_ms_per_token", "prefill_ns_per_weight_1thread", n_prefill)):
            ms = t[key]["median"]
            if q in KQUANTS:
                base = times["Q4_0"][key]["median"]
                row[short] = round(base * 1e6 / n_read + (ms - base) * 1e6 / n_down, 4)
            else:
                row[short] = round(ms * 1e6 / n_read, 4)
        out[q] = row
    print(json.dumps({"reference": str(ref), "weights_read_per_token": n_decode,
                      "weights_read_per_prompt_token": n_prefill, "ffn_down_weights": n_down,
                      "rounds": args.rounds, "prompt_tokens": args.prompt, "tokens": args.tokens,
                      "threads": 1, "clock": "process CPU time", "cpus": os.cpu_count(),
                      "cpu": cpu.to_dict() if (cpu := host_cpu_kind()) else None,
                      "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(), "formats": out}, indent=1))


if __name__ == "__main__":
    main()
