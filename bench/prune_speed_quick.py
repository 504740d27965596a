"""Ad-hoc decode check (run 2026-11-30 22:23 UTC, load ~20): a pruned SmolLM2 (layers=26,ffn=1024, scored on
the calibration plays) quantized by llama.cpp to Q4_K_M, against edgegen quant-only@Q4_K_M and llama.cpp Q4_K_M
(files from bench/prune_distill.py's first stage), 3 interleaved rounds, 1 thread, CPU ms per decoded token.
Not the full bench: the shared lock was held by another helper's benchmarks until the deadline.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, "bench")
from quant_vs_llamacpp import _spread, llama_quantize

from edgegen.evaluate.bench import bytes_read_per_token, compare_speed
from edgegen.evaluate.rounds import Noise, Spread, load_average, ratios, supported

# argv: the bench home (bench/prune_distill.py's --out), a pruned GGUF, rounds, and "as-is" when that GGUF is
# already quantized (e.g. bench/prune_distill.py's prune-distill-quant.gguf); otherwise an unquantized pruned
# GGUF (`edgegen prune`) that llama.cpp quantizes to Q4_K_M here
w = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/cache/edgegen/bench/prune_distill")
cand = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/c3/cand-layers26_ffn1024.gguf")
as_is = len(sys.argv) > 4 and sys.argv[4] == "as-is"
if as_is:
    pr, label = cand, f"pruned {cand.stem} (as given)"
else:
    pr = llama_quantize(cand, cand.with_name("pruned-llamacpp-Q4_K_M.gguf"), "Q4_K_M", 1)
    label = f"pruned {cand.stem} + llama.cpp Q4_K_M"
files = {"quant-only@Q4_K_M (edgegen)": w/"quant-only-q4km.gguf", "llama.cpp Q4_K_M": w/"llamacpp-Q4_K_M.gguf",
         label: pr}
lb = load_average()
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
raw = compare_speed(list(files.values()), rounds=rounds, prompt_tokens=511, gen_tokens=32, n_threads=1)
dec = {n: raw[str(p)]["decode_cpu_ms_per_token"] for n, p in files.items()}
noise = Noise(load_before=lb, threads=1, cores=2, max_cv=max(Spread.of(v).cv for v in dec.values()))
base = dec["quant-only@Q4_K_M (edgegen)"]
out = {n: {"bytes": p.stat().st_size, "weight_bytes_per_token": bytes_read_per_token(p),
           "decode_ms": _spread(dec[n]), "speedup_vs_quant_only": ratios(dec[n], base).to_dict(),
           "supported": supported(ratios(dec[n], base), noise)} for n, p in files.items()}
print(json.dumps({"noise": noise.to_dict(), "files": out, "load_end": os.getloadavg()}, indent=1))
