"""How fast llama.cpp decodes and prefills each block format: a per-weight cost model for the allocator.

At batch size 1 every weight matrix (and the output matrix, which is the token embedding when the
two are tied) is read once per token, and the time a matrix costs is close to its parameter count
times a per-format constant of the CPU kernels. Formats differ a lot: on x86-64 with AVX2, Q4_0 and
IQ4_NL are repacked into interleaved layouts and run fastest; Q4_1, Q5_0, Q5_1 and Q8_0 cost about
1.6x as much per weight. ``DECODE_NS_PER_WEIGHT`` holds those constants as ``bench/format_speed.py``
measured them with llama-cpp-python 0.3.36 on the 2-core AMD EPYC (AVX2, FMA, F16C) the benchmarks
run on, with the machine otherwise idle (mean of two runs; one thread, best-of-6 CPU time per
generated token of SmolLM2-135M written entirely in one format, k-quants: only the 1536-wide FFN
down projections in the k-quant, the rest Q4_0). The per-token work outside the matrices is spread
evenly over the weights, which leaves comparisons between complete plans of one model unchanged.
Other CPUs order the formats similarly but not identically; the model only steers choices, the
benchmark measures real speed.

Another CPU is described by a profile: ``edgegen profile-cpu`` (``compress.format_profile``) run on
it measures one and saves it under the data dir by CPU kind, where ``compress --speed-of`` finds it
(``bench/format_speed.py`` prints the same JSON), and ``load_profile(path)`` reads it (or a plain
``{"Q4_0": ns, ...}`` mapping) for ``compress``. A profile
names the CPU it was measured on (``CpuKind``: model name and the SIMD extensions ggml-cpu picks its
kernels by; the constants here: ``BUILTIN_PROFILE_CPU``), and ``profile_mismatch`` says when that is
not the CPU at hand: on a 2-core Intel Xeon with AVX-512, a file that these AVX2 constants predicted
to prefill no slower than llama.cpp's Q4_K_M prefilled at 0.925x its speed (median of 19 rounds, 95%
interval 0.893-0.982; ``bench/results/quant_vs_llamacpp.fresh-placement-epyc-profile.json``,
published Q4_K_M row); planned with this CPU's own profile, the same row prefilled at 1.063x
(1.016-1.104; ``quant_vs_llamacpp.xeon-profile.json``).

Prefill (evaluating the prompt, what sets the time to first token) runs other kernels: the prompt's
tokens go through each matrix together, as a matrix-matrix product, and there the formats' order
changes. In the vendored ggml-cpu of llama-cpp-python 0.3.36, on x86-64 with AVX2: Q4_0, IQ4_NL
and Q4_K are repacked at load into 8x8 interleaved layouts with their own GEMM kernels
(``ggml-cpu/repack.cpp``, ``ggml_repack_get_optimal_repack_type``; Q2_K only with AVX-512), and
F32, F16, Q8_0, Q4_0, Q5_0 and IQ4_NL have llamafile's tiled GEMM (``ggml-cpu/llamafile/sgemm.cpp``);
Q4_1, Q5_1 and the other k-quants fall back to one dot product per row and column. Q4_1 is about as
fast as Q8_0 in decode but far slower in prefill. ``PREFILL_NS_PER_WEIGHT`` holds the cost per weight
per prompt token as ``bench/format_speed.py`` measured it (``bench/results/format_speed.prefill.json``:
prompt of ``PROMPT_TOKENS`` tokens, one batch, one thread, median CPU time of 3 interleaved rounds,
same machine, but under a load average of 9 to 15, so in inflated units: only ratios within the
table are meant; Q4_1 / Q4_0 = 2.1, Q5_1 2.5, Q5_0 1.5, Q8_0 1.23, IQ4_NL 1.05, spreads 3-12%).
F16 and F32 were not measured; they are their decode costs scaled by the median prefill/decode ratio.
Prefill applies every matrix to every prompt token except the output matrix, which llama.cpp
applies to the last prompt token only (``read_per_prompt_token``).

``decode_cost(...)`` of a plan or of an existing GGUF is the predicted milliseconds of matrix work
per token at one thread; comparing two files of the same model by it is meaningful (the per-token
overheads outside the matrices are the same), its absolute value is approximate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.formats.gguf_file import open_reader, read_per_token

# CPU flags (as /proc/cpuinfo spells them) that decide which ggml-cpu kernels run: the x86 SIMD levels,
# dot-product and matrix extensions, and their Arm counterparts.
KERNEL_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2")


@dataclass(frozen=True)
class CpuKind:
    """The CPU a speed profile was measured on: its model name and which ``KERNEL_FLAGS`` it has."""

    model: str
    isa: tuple[str, ...]  # sorted

    def to_dict(self) -> dict:
        return {"model": self.model, "isa": list(self.isa)}

    @classmethod
    def from_dict(cls, d: Mapping) -> CpuKind:
        """From ``to_dict``'s form; raises ``UserInputError`` unless ``isa`` is a list of names."""
        isa = d.get("isa", [])
        if not isinstance(isa, list) or not all(isinstance(f, str) for f in isa):
            from edgegen.errors import UserInputError

            raise UserInputError(f"a speed profile's cpu.isa must be a list of flag names, not {isa!r}")
        return cls(str(d.get("model", "")), tuple(sorted(isa)))

    def describe(self) -> str:
        return f"{self.model or 'unknown CPU'} ({', '.join(self.isa) or 'no SIMD flags listed'})"


# the machine ``DECODE_NS_PER_WEIGHT`` and ``PREFILL_NS_PER_WEIGHT`` were measured on
BUILTIN_PROFILE_CPU = CpuKind("AMD EPYC, 2 cores", ("avx", "avx2", "f16c", "fma"))


def cpu_kind_of(cpuinfo: str) -> CpuKind:
    """Pure: the ``CpuKind`` described by the text of ``/proc/cpuinfo`` (its first processor; x86 says
    ``model name`` and ``flags``, Arm ``CPU part`` / ``Features``)."""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = " ".join(value.split())
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "cpu part" and not model:
            model = f"Arm CPU part {value.strip()}"
    return CpuKind(model, tuple(sorted(f for f in KERNEL_FLAGS if f in flags)))


def host_cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuKind | None:
    """This machine's ``CpuKind``, or None where ``cpuinfo`` cannot be read."""
    try:
        return cpu_kind_of(Path(cpuinfo).read_text())
    except OSError:
        return None


def profile_mismatch(profile: CpuKind | None, host: CpuKind | None) -> str | None:
    """Pure: a sentence saying why a profile measured on ``profile`` may mispredict on ``host`` (their
    kernel flags differ), or None when they agree or either is unknown."""
    if profile is None or host is None or profile.isa == host.isa:
        return None
    return (f"the speed profile was measured on {profile.describe()}, but this CPU is {host.describe()}: "
            "ggml-cpu runs other kernels here, so predicted speeds may be off; measure this CPU once with "
            "`edgegen profile-cpu` (compress then uses its profile) or pass one as --speed-profile")


def profile_cpu_kind(path: Path | None) -> CpuKind | None:
    """The ``CpuKind`` a profile file names (``"cpu"``), ``BUILTIN_PROFILE_CPU`` for ``path`` None, and
    None for a profile that names none (a plain mapping). Raises ``UserInputError`` if unreadable."""
    if path is None:
        return BUILTIN_PROFILE_CPU
    data = _read_profile(path)
    cpu = data.get("cpu") if isinstance(data, dict) else None
    return CpuKind.from_dict(cpu) if isinstance(cpu, dict) else None

DECODE_NS_PER_WEIGHT: dict[str, float] = {
    "Q2_K": 0.027,
    "Q4_K": 0.0312,
    "Q4_0": 0.0329,
    "IQ4_NL": 0.0335,
    "Q6_K": 0.0373,
    "Q5_K": 0.0409,
    "Q3_K": 0.0433,
    "Q8_0": 0.0510,
    "Q4_1": 0.0516,
    "Q5_0": 0.0527,
    "Q5_1": 0.0570,
    "F16": 0.0712,
    "F32": 0.111,
}
PREFILL_NS_PER_WEIGHT: dict[str, float] = {
    "Q4_K": 0.0429,
    "Q5_K": 0.0462,
    "Q6_K": 0.0522,
    "Q4_0": 0.0529,
    "IQ4_NL": 0.0554,
    "Q3_K": 0.0561,
    "Q2_K": 0.0597,
    "Q8_0": 0.0649,
    "Q5_0": 0.0804,
    "F16": 0.1086,  # not measured: decode cost x the median prefill/decode ratio
    "Q4_1": 0.11,
    "Q5_1": 0.1329,
    "F32": 0.1693,  # not measured: decode cost x the median prefill/decode ratio
}
PROMPT_TOKENS = 511  # the prompt length the prefill constants were measured at
UNKNOWN_NS = 0.1


def read_per_prompt_token(name: str) -> bool:
    """Whether prefill applies tensor ``name`` to every prompt token: every matrix but the embedding
    (looked up) and the output matrix (or the tied embedding), which only the last token needs."""
    return name not in ("token_embd.weight", "output.weight")


def tensor_ms(qtype: str, n_params: int, costs: Mapping[str, float] | None = None) -> float:
    return (costs or DECODE_NS_PER_WEIGHT).get(qtype, UNKNOWN_NS) * n_params * 1e-6


def decode_cost(
    tensors: Iterable[tuple[str, tuple[int, ...], str]], costs: Mapping[str, float] | None = None
) -> float:
    """Predicted ms of matrix work per token, from (name, shape, ggml type name) of every tensor."""
    items = list(tensors)
    names = {n for n, _, _ in items}
    return sum(
        tensor_ms(t, int(np.prod(s)), costs) for n, s, t in items if len(s) >= 2 and read_per_token(n, names)
    )


def prefill_cost(
    tensors: Iterable[tuple[str, tuple[int, ...], str]], costs: Mapping[str, float] | None = None
) -> float:
    """Predicted ms of matrix work per prompt token, from (name, shape, ggml type name) of every tensor."""
    table = costs or PREFILL_NS_PER_WEIGHT
    return sum(tensor_ms(t, int(np.prod(s)), table) for n, s, t in tensors if len(s) >= 2 and read_per_prompt_token(n))


def _file_tensors(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    reader = open_reader(Path(path))
    return [(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors]


def file_decode_cost(path: Path, costs: Mapping[str, float] | None = None) -> float:
    """``decode_cost`` of an existing GGUF file."""
    return decode_cost(_file_tensors(path), costs)


def file_prefill_cost(path: Path, costs: Mapping[str, float] | None = None) -> float:
    """``prefill_cost`` of an existing GGUF file."""
    return prefill_cost(_file_tensors(path), costs)


def _read_profile(path: Path) -> object:
    """The parsed JSON of a speed profile file; raises ``UserInputError`` if it cannot be read."""
    from edgegen.errors import UserInputError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read the speed profile {path}: {exc}") from exc


def load_profile(path: Path, key: str = "ns_per_weight_1thread") -> dict[str, float]:
    """A CPU's per-format costs (ns per weight): ``format_profile.measure``'s JSON or a plain mapping.

    ``key`` picks the decode costs (``ns_per_weight_1thread``) or the prefill costs
    (``prefill_ns_per_weight_1thread``; a plain mapping serves as both; a profile with decode costs
    only gives the prefill table scaled by its decode scale). Formats the profile does
    not name keep this module's constants, scaled by the median ratio of the formats it does name,
    so a partial profile still ranks every format.
    """
    base = PREFILL_NS_PER_WEIGHT if key.startswith("prefill") else DECODE_NS_PER_WEIGHT
    from edgegen.errors import UserInputError

    data = _read_profile(path)
    table = data.get("formats", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise UserInputError(f"the speed profile {path} is not a mapping of format to cost")
    costs: dict[str, float] = {}
    for name, v in table.items():
        value = v.get(key) if isinstance(v, dict) else v
        if (name.upper() in base and isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value > 0):
            costs[name.upper()] = float(value)
    if not costs and base is PREFILL_NS_PER_WEIGHT:  # a decode-only profile: scale the prefill table
        decode = load_profile(path)
        scale = float(np.median([decode[k] / DECODE_NS_PER_WEIGHT[k] for k in decode]))
        return {k: v * scale for k, v in base.items()}
    if not costs:
        raise UserInputError(f"the speed profile {path} names no known format with a positive cost")
    scale = float(np.median([costs[k] / base[k] for k in costs]))
    return {k: costs.get(k, v * scale) for k, v in base.items()}
