"""Decode and prefill cost of each block format under llama.cpp on this CPU: the constants of ``compress.speed``.
The method lives in ``edgegen.compress.format_profile`` (``edgegen profile-cpu`` runs it and saves the
profile where ``compress --speed-of`` finds it); this script runs it on the Foundation's F16 reference
and prints the JSON, for bench/results.

    .venv/bin/python bench/format_speed.py [--home DIR] [--out DIR] [--rounds 9] [--prompt 511] [--tokens 32]

Writes SmolLM2-135M (the Foundation's F16 reference) once per format into a fresh folder under
``--out`` (removed afterwards), every weight matrix the format fits in that format and the rest in
Q4_0 (the 256-wide k-quants fit only the FFN down projections, 1536 columns); plain round-to-nearest,
as the values do not change the kernels' speed. The files run in interleaved rounds
(``evaluate.bench.compare_speed``: one thread, process CPU time; each round prefills a
``--prompt``-token prompt and decodes ``--tokens`` greedy tokens with every file in turn, Williams
order). Per file: the median and spread of CPU ms per prompt token and per generated token, and of its
ratio to the Q4_0 file in the same round.

Per-weight cost, ns: ``format_profile.fit_costs`` on the same-round times (``same_round_times``: the
median ratio to Q4_0 times Q4_0's median), one linear equation per file under the additive model;
where a format fills the model this is ``T_X / N`` (N the weights read per token: for decode every
matrix and the embedding once as the tied output; for prefill every matrix but the output). Prints
JSON: per format the medians, spreads and the fitted ``ns_per_weight_1thread`` (decode) and
``prefill_ns_per_weight_1thread``. Run on a target device, that JSON is its speed profile:
``edgegen compress ... --speed-of FILE --speed-profile JSON`` (``edgegen profile-cpu`` also saves it
where compress finds it by itself).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    from edgegen.compress.format_profile import FORMATS, measure

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "bench-format-speed")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--prompt", type=int, default=511)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--formats", default=",".join(FORMATS))
    args = ap.parse_args()

    from edgegen.compress.speed import host_cpu_kind
    from edgegen.formats.convert import cached_reference
    from edgegen.hub.sources import pull

    ref = cached_reference(pull("smollm2-135m-instruct", args.home), args.home)
    data = measure(ref, args.out, formats=args.formats.split(","), rounds=args.rounds, prompt=args.prompt,
                   tokens=args.tokens, cpu=host_cpu_kind())
    print(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
