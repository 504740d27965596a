"""How finely to interleave decode timing: the same files measured at several ``block`` sizes.

``evaluate.bench.compare_speed`` lets the files take turns at ``block`` decode steps each. One token per
turn (``block=1``) puts every file in the same few milliseconds of a shared machine's load; a whole
decode per turn (``block >= gen_tokens``) is how a device runs one model, with whatever of its weights
the cache kept from the previous token. This bench runs the block sizes in interleaved repetitions on
the same files and reports, per block size, the median and range of each file's speed over the first
file (its CPU ms per token / the file's, round by round), so the two questions can be answered from one
run: how much spread each block size leaves, and whether the fine interleaving moves the median.
A copy of the first file under another name is the control: its ratio should be 1.

    PYTHONPATH=src .venv/bin/python bench/speed_interleave.py --reps 4 FILE.gguf OTHER.gguf [...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path, help="GGUF files; ratios are to the first")
    ap.add_argument("--reps", type=int, default=4, help="repetitions of the block sizes, interleaved")
    ap.add_argument("--rounds", type=int, default=4, help="compare_speed rounds per repetition")
    ap.add_argument("--blocks", default="1,4,31")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--no-mmap", action="store_true", help="load the weights into allocated memory, not mmap")
    ap.add_argument("--fresh", action="store_true", help="time fresh copies of every file (in --work), so no file "
                    "keeps page-cache pages older than another's")
    ap.add_argument("--work", type=Path, default=Path("/tmp/speed_interleave"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speed_interleave.json")
    args = ap.parse_args()

    from edgegen.evaluate.bench import compare_speed
    from edgegen.evaluate.rounds import load_average, ratios

    args.work.mkdir(parents=True, exist_ok=True)
    given = list(args.files)
    if args.fresh:
        for i, f in enumerate(args.files):
            given[i] = args.work / f"fresh-{i}-{f.name}"
            shutil.copyfile(f, given[i])
    control = args.work / f"copy-of-{given[0].name}"
    shutil.copyfile(given[0], control)
    files = [*given, control]
    blocks = [int(b) for b in args.blocks.split(",")]
    per_block: dict[int, dict[str, list[float]]] = {b: {str(f): [] for f in files} for b in blocks}
    load_start = load_average()
    for rep in range(args.reps):
        for b in blocks[rep % len(blocks):] + blocks[: rep % len(blocks)]:
            raw = compare_speed(files, rounds=args.rounds, prompt_tokens=511, gen_tokens=args.gen_tokens, block=b,
                                use_mmap=not args.no_mmap)
            for f in files:
                per_block[b][str(f)] += raw[str(f)]["decode_cpu_ms_per_token"]
            print(f"rep {rep} block {b} done", file=sys.stderr)
    result: dict = {"argv": sys.argv[1:], "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
                    "gen_tokens": args.gen_tokens, "use_mmap": not args.no_mmap, "fresh_copies": args.fresh,
                    "rounds_per_block": args.reps * args.rounds, "blocks": {}}
    base = str(files[0])
    for b in blocks:
        rows = {}
        for f in files:
            ms = per_block[b][str(f)]
            r = ratios(ms, per_block[b][base])
            label = str(args.files[given.index(f)]) if f in given else "control (copy of the first)"
            rows[label] = {
                "decode_ms_median": round(statistics.median(ms), 3),
                "speed_vs_first": {"median": round(r.median, 3), "low": round(r.low, 3), "high": round(r.high, 3),
                                   "cv": round(r.cv, 4)}}
        result["blocks"][str(b)] = rows
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["blocks"], indent=1))


if __name__ == "__main__":
    main()
