"""The steps of ``pipeline.compress`` that touch the source model: read, calibrate, measure, round.

``SourceModel`` wraps a GGUF reader: which tensors are weight matrices (2-D, to be quantized) and
which are kept (norms, stored F32), their candidate types, sizes and float32 values.
``run_calibration`` tokenizes the text with the model's own tokenizer (llama.cpp) and runs
``calibrate``; ``measure_all`` and ``Rounder`` batch the matrices that share an input Hessian
(q/k/v, gate/up) so each group costs one GPTQ pass and one Cholesky factorisation.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.compress.blocks import F16, F32, FloatType, QuantType, storage_type
from edgegen.compress.calibrate import Calibration, TensorStats, calibrate, token_sequences
from edgegen.compress.gguf_out import OutTensor, padded
from edgegen.compress.mixed import Candidate, TensorChoice, allocate, measure_group, plain_weights, row_loss
from edgegen.compress.rounding import hessian_error, inverse_cholesky, round_parts
from edgegen.compress.speed import PREFILL_NS_PER_WEIGHT, read_per_prompt_token, tensor_ms
from edgegen.errors import InvalidTextError, UnsupportedArchitectureError, UserInputError
from edgegen.formats.gguf_file import read_per_token

MIN_CALIB_TOKENS = 64
log = logging.getLogger(__name__)


class SourceModel:
    def __init__(self, reader: Any):
        import gguf

        self.reader = reader
        self.tensors = {t.name: t for t in reader.tensors}
        self.shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
        floats = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
        self.matrices = [
            t.name for t in reader.tensors
            if len(self.shapes[t.name]) == 2 and (t.tensor_type in floats or t.tensor_type in gguf.quants._type_traits)
        ]
        self.n_params = sum(int(np.prod(s)) for s in self.shapes.values())

    def weight(self, name: str) -> np.ndarray:
        import gguf

        t = self.tensors[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(self.shapes[name])

    def candidates(self, name: str, types: Sequence[str]) -> list[QuantType | FloatType]:
        import gguf

        cols = self.shapes[name][1]
        out: list[QuantType | FloatType] = [qt for qt in map(storage_type, types) if qt.fits(cols)]
        out.append(F16)
        if self.tensors[name].tensor_type == gguf.GGMLQuantizationType.F32:
            out.append(F32)
        return out

    def quantizable(self, types: Sequence[str]) -> bool:
        return any(
            isinstance(qt, QuantType) for name in self.matrices for qt in self.candidates(name, types)
        )

    def _kept(self) -> list[str]:
        mats = set(self.matrices)
        return [name for name in self.tensors if name not in mats]

    def fixed_raw_bytes(self) -> int:
        return sum(4 * int(np.prod(self.shapes[n])) for n in self._kept())

    def fixed_bytes(self) -> int:
        return sum(padded(4 * int(np.prod(self.shapes[n]))) for n in self._kept())

    def min_bytes(self, types: Sequence[str]) -> int:
        return sum(
            min(qt.row_bytes(self.shapes[n][1]) for qt in self.candidates(n, types)) * self.shapes[n][0]
            for n in self.matrices
        )

    def out_plan(self, picks: dict[str, str]) -> list[OutTensor]:
        """Every tensor in source order: matrices in their picked type (F32 if none), the rest F32."""
        plan = []
        for name, shape in self.shapes.items():
            qtype = picks.get(name, "F32") if name in set(self.matrices) else "F32"
            nbytes = storage_type(qtype).row_bytes(shape[-1]) * int(np.prod(shape[:-1]))
            plan.append(OutTensor(name, shape, qtype, nbytes))
        return plan

    def kept_data(self, name: str) -> np.ndarray:
        return self.weight(name)


def check_experts(model: SourceModel, arch: str) -> None:
    """UnsupportedArchitectureError for Mixture-of-Experts expert tensors (3-D [n_expert, rows,
    cols]): not quantized per expert yet, and kept whole they would stay F32."""
    experts = [n for n, s in model.shapes.items() if len(s) > 2]
    if experts:
        raise UnsupportedArchitectureError(
            f"{arch} has Mixture-of-Experts expert tensors ({len(experts)}, e.g. {experts[0]}); "
            "edgegen does not compress MoE models yet"
        )


def read_calibration(path: Path | None = None, text: str | None = None) -> str | None:
    """The calibration text: from a file, a folder of ``*.txt`` files, or given as is; None if neither."""
    if path is not None and text is not None:
        raise UserInputError("give either a calibration file or a calibration text, not both")
    if path is not None:
        from edgegen.hub.texts import read_text_source

        text = read_text_source(Path(path), "calibration text")
        where = str(path)
    elif text is None:
        return None
    else:
        where = "the calibration text"
    if not text.strip():
        raise InvalidTextError(f"{where} is empty; calibration needs some text")
    return text


def run_calibration(
    gguf_path: Path, reader: Any, text: str, config: Any, progress: Callable[[int, int], None] | None,
    matrices: Sequence[str] | None = None,
) -> Calibration:
    """Hessians of every weight matmul from llama.cpp's graph (``graph_stats``, any architecture it
    runs); Fisher weights from the torch forward where it covers the architecture (llama, qwen2),
    else the embedding's lookup shares (``lookup_importance``) and no per-row weights."""
    from edgegen.compress import forward
    from edgegen.compress.calibrate import lookup_importance
    from edgegen.compress.graph_stats import collect_hessians
    from edgegen.runtime.engine import Engine

    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    with Engine(gguf_path, n_ctx=max(config.seq_len, 64), n_threads=config.n_threads) as engine:
        tokens = engine.tokenize(text, add_bos=False, special=False)
        add_bos = engine.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        bos = engine.bos_id if add_bos else None
    if len(tokens) < MIN_CALIB_TOKENS:
        raise InvalidTextError(
            f"the calibration text has {len(tokens)} tokens; at least {MIN_CALIB_TOKENS} are needed"
        )
    seq_len = min(config.seq_len, len(tokens) + (1 if bos is not None else 0))
    seqs = token_sequences(tokens, seq_len, config.calib_seqs, bos)
    names = set(matrices) if matrices is not None else {t.name for t in reader.tensors}
    graph = collect_hessians(gguf_path, seqs, names, n_threads=config.n_threads, progress=progress)
    cal = Calibration(n_tokens=graph.n_tokens,
                      sources={"hessian": "llama.cpp graph (cb_eval on MUL_MAT inputs)"})
    for group, H in graph.hessians.items():
        for name in group:
            cal.stats[name] = TensorStats(hessian=H)
    arch = str(meta.get("general.architecture", "?"))
    n_fisher = min(config.fisher_seqs, len(seqs))
    torch_model = None
    if arch in forward.SUPPORTED and n_fisher:
        try:
            torch_model = forward.load_forward(reader, meta)
        except UnsupportedArchitectureError as exc:  # e.g. rotary scaling the torch forward lacks
            log.info("no Fisher weights: %s", exc)
    if torch_model is not None:
        grads = calibrate(torch_model, seqs[:n_fisher], fisher_seqs=n_fisher, seed=config.seed, hessians=False)
        del torch_model
        for name, st in grads.stats.items():
            mine = cal.stats.setdefault(name, TensorStats(hessian=np.zeros((0, 0), np.float32)))
            mine.fisher, mine.input_fisher = st.fisher, st.input_fisher
        cal.n_fisher_tokens = grads.n_fisher_tokens
        cal.sources["fisher"] = f"torch forward ({arch}), gradients on {n_fisher} sequence(s)"
    else:
        embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if embd is not None:  # the lookup side (tied: on top of the output head's Hessian)
            vocab, dim = int(embd.shape[1]), int(embd.shape[0])
            st = cal.stats.setdefault("token_embd.weight", TensorStats(hessian=np.zeros((0, 0), np.float32)))
            st.input_fisher = lookup_importance(seqs, vocab, dim)
        cal.sources["fisher"] = f"none ({arch}: no gradients; token_embd rows weighted by lookup share)"
    return cal


def _stats(cal: Calibration | None, name: str) -> TensorStats | None:
    return cal.get(name) if cal is not None else None


def _groups(model: SourceModel, cal: Calibration | None) -> list[list[str]]:
    """Matrices grouped by the Hessian they share (q/k/v, gate/up), in source order of first member."""
    groups: dict[Any, list[str]] = {}
    for name in model.matrices:
        st = _stats(cal, name)
        cols = model.shapes[name][1]
        key = id(st.hessian) if st is not None and st.hessian.shape == (cols, cols) else ("solo", name)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


class CholCache:
    """``inverse_cholesky`` once per distinct Hessian, shared by the measuring and the final pass."""

    def __init__(self, damp: float):
        self.damp, self.cache = damp, {}

    def get(self, hessian: np.ndarray | None) -> Any:
        if hessian is None:
            return None
        if id(hessian) not in self.cache:
            self.cache[id(hessian)] = inverse_cholesky(hessian, self.damp)
        return self.cache[id(hessian)]


def _hessian(cal: Calibration | None, name: str, cols: int) -> np.ndarray | None:
    st = _stats(cal, name)
    return st.hessian if st is not None and st.hessian.shape == (cols, cols) else None


def measure_all(
    model: SourceModel, cal: Calibration | None, config: Any, chol: CholCache,
    progress: Callable[[int, int], None] | None, speed_costs: Mapping[str, float] | None = None,
    prefill_costs: Mapping[str, float] | None = None,
) -> list[TensorChoice]:
    """Every matrix's candidates with predicted loss, bytes, decode ms per token (``speed_costs``)
    and prefill ms per prompt token (``prefill_costs``; default: ``speed``'s tables)."""
    out: list[TensorChoice] = []
    names = set(model.shapes)
    done = 0
    for group in _groups(model, cal):
        members = [(n, model.weight(n), _stats(cal, n)) for n in group]
        cands = [model.candidates(n, config.types) for n in group]
        H = _hessian(cal, group[0], model.shapes[group[0]][1])
        seed = config.seed * 1_000_003 + zlib.crc32(group[0].encode())
        for choice in measure_group(members, cands, hessian=H, chol=chol.get(H), max_rows=config.sample_rows,
                                    seed=seed):
            n = choice.shape[0] * choice.shape[1]
            decode, prefill = read_per_token(choice.name, names), read_per_prompt_token(choice.name)
            choice.candidates = [
                replace(c, ms=tensor_ms(c.qtype, n, speed_costs) if decode else 0.0,
                        prefill_ms=tensor_ms(c.qtype, n, prefill_costs or PREFILL_NS_PER_WEIGHT) if prefill else 0.0)
                for c in choice.candidates]
            out.append(choice)
        done += len(group)
        if progress:
            progress(done, len(model.matrices))
    return out


def allocate_types(
    choices: list[TensorChoice], tensor_budget: int, max_ms: float | None = None,
    max_prefill_ms: float | None = None,
) -> dict[str, Candidate]:
    return allocate(choices, tensor_budget, max_ms, max_prefill_ms)


class Rounder:
    """``produce(t)`` for ``write_quantized``: rounds a tensor's whole Hessian group on first request."""

    def __init__(self, model: SourceModel, cal: Calibration | None, plan: list[OutTensor], chol: CholCache):
        self.model, self.cal, self.chol = model, cal, chol
        self.types = {t.name: t.qtype for t in plan}
        self.group_of = {n: g for g in _groups(model, cal) for n in g}
        self.ready: dict[str, np.ndarray] = {}
        self.measured: dict[str, tuple[float, float]] = {}  # name -> (predicted KL on all rows, rel. error)

    def produce(self, t: OutTensor) -> np.ndarray:
        if t.name not in self.group_of:
            return self.model.kept_data(t.name).astype(np.float32)
        if t.name not in self.ready:
            self._round_group(self.group_of[t.name])
        return self.ready.pop(t.name)

    def _round_group(self, group: list[str]) -> None:
        cols = self.model.shapes[group[0]][1]
        H = _hessian(self.cal, group[0], cols)
        weights = [self.model.weight(n) for n in group]
        stats = [_stats(self.cal, n) for n in group]
        types = [storage_type(self.types[n]) for n in group]
        plain = [plain_weights(s, slice(None)) for s in stats]
        results = round_parts(weights, types, hessian=H, weights=plain, chol=self.chol.get(H))
        for name, W, st, r in zip(group, weights, stats, results, strict=True):
            E = W - r.values
            loss = float(row_loss(E, st, np.arange(len(W))).sum())
            rel = float("nan")
            if H is not None:
                rel = float(hessian_error(E, H).sum() / max(hessian_error(W, H).sum(), 1e-30))
            self.measured[name] = (loss, rel)
            self.ready[name] = r.data
