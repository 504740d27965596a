"""Load-time cost of encryption at rest: a model loaded from a plain file vs from a sealed one
(``edgegen.sealed``: AES-256-GCM chunks decrypted into a memfd, which llama.cpp then mmaps).

Interleaved rounds in fresh processes (plain, sealed, plain, sealed, ...), one thread, page cache warm
for both (each file is read once before the rounds). Reported per variant: median and range of the
wall time from "start loading" to "first token generated" and of the load's CPU time, and the
ratio sealed / plain computed per round, with its median and range. Also the one-time sealing cost
(what installing a model costs more). The load average before and after is recorded; when the
ranges of the two variants overlap, the difference is not resolved and the JSON says so.

    .venv/bin/python bench/at_rest_load.py [--model PATH] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time, os
t0, c0 = time.perf_counter(), time.process_time()
from pathlib import Path
from edgegen.runtime.engine import Engine, SamplingParams
path, key_file = sys.argv[1], sys.argv[2]
handle = None
t1, c1 = time.perf_counter(), time.process_time()
if key_file != "-":
    from edgegen.sealed import plain_copy
    handle = plain_copy(Path(path), Path(key_file).read_bytes())
    path = str(handle.path)
e = Engine(path, n_ctx=256, n_threads=1)
if handle is not None:
    handle.close()
e.complete("Once upon a time", SamplingParams.greedy(1))
print(json.dumps({"load_s": time.perf_counter() - t1, "load_cpu_s": time.process_time() - c1}))
"""


def run(model: Path, key: Path | None) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(key) if key else "-"], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    args = ap.parse_args()
    from edgegen.sealed import DeviceKey, SealedWriter

    if args.model is None:
        from edgegen.hub.sources import pull

        args.model = pull("smollm2-135m-instruct", args.home)
    tmp = Path(tempfile.mkdtemp(prefix="atrest-"))
    key_file = tmp / "device.key"
    key = DeviceKey.load_or_create(key_file)
    sealed = tmp / "model.sealed"
    t0 = time.perf_counter()
    with SealedWriter(sealed, key) as w, open(args.model, "rb") as f:
        while chunk := f.read(1 << 20):
            w.write(chunk)
    seal_s = time.perf_counter() - t0
    args.model.read_bytes(), sealed.read_bytes()  # warm the page cache for both
    load0 = os.getloadavg()
    plain, locked, ratio = [], [], []
    for _ in range(args.rounds):
        p = run(args.model, None)
        s = run(sealed, key_file)
        plain.append(p)
        locked.append(s)
        ratio.append(s["load_s"] / p["load_s"])
    pw, sw = [r["load_s"] for r in plain], [r["load_s"] for r in locked]
    result = {
        "bench": "at_rest_load", "model": str(args.model), "model_bytes": args.model.stat().st_size,
        "rounds": args.rounds, "seal_once_s": round(seal_s, 3),
        "plain_load_s": summary(pw), "sealed_load_s": summary(sw),
        "plain_load_cpu_s": summary([r["load_cpu_s"] for r in plain]),
        "sealed_load_cpu_s": summary([r["load_cpu_s"] for r in locked]),
        "ratio_sealed_over_plain": summary(ratio),
        "resolved": max(pw) < min(sw) or max(sw) < min(pw),
        "loadavg_before": load0, "loadavg_after": os.getloadavg(),
    }
    text = json.dumps(result, indent=1)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "at_rest_load.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
