"""Input Hessians of every weight matmul, read from llama.cpp's own compute graph as it runs the model.

llama.cpp calls an evaluation callback (``cb_eval`` in ``llama_context_params``; ggml's
``ggml_backend_sched_eval_callback``) for every node of the graph: first with ``ask=True`` ("do you
want to see this node?"), then, for the nodes we said yes to, with ``ask=False`` once the node is
computed. This is the mechanism of llama.cpp's ``llama-imatrix`` (tools/imatrix/imatrix.cpp,
``IMatrixCollector::collect_imatrix``): a ``MUL_MAT`` node whose ``src[0]`` is a model weight has the
weight's GGUF name (``blk.3.attn_q.weight``), and its ``src[1]`` [T, cols] is the activation that
weight reads. llama-imatrix keeps the per-column mean square; we keep the whole input Hessian

    H = mean over tokens of x x^T   [cols, cols]   (its diagonal is llama-imatrix's importance)

so GPTQ rounding can use it. Matching is by the tensor's own name, so it needs no table of
architectures: any model llama.cpp builds a graph for is covered, tied output heads included (the
``output`` matmul then reads ``token_embd.weight``). Matmuls that read the same ``src[1]`` node (q/k/v,
gate/up) share one Hessian object, as ``calibrate`` promises. Expert matmuls (``MUL_MAT_ID``) are
not collected. Only host (CPU) buffers are read.

Every position must be an output, or llama.cpp drops all but the last position before the last
layer's FFN and the output head; so each sequence costs [T, vocab] float32 of logits.

The ``ggml_tensor`` struct is laid out here as in the vendored ggml.h of llama-cpp-python 0.3.36
(``ggml/include/ggml.h``: GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import EngineError, UnsupportedArchitectureError


class _GgmlTensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


GGML_TYPE_F32 = 0


@dataclass
class GraphHessians:
    """``hessians[names]``: H [cols, cols] float32 shared by the weights ``names`` that read one input."""

    hessians: dict[tuple[str, ...], np.ndarray]
    n_tokens: int

    def by_name(self) -> dict[str, np.ndarray]:
        return {name: h for names, h in self.hessians.items() for name in names}


class _Collector:
    def __init__(self, weights: set[str], ggml: ctypes.CDLL):
        self.weights = weights
        self.op_name: dict[int, str] = {}
        ggml.ggml_op_name.restype = ctypes.c_char_p
        ggml.ggml_op_name.argtypes = [ctypes.c_int]
        ggml.ggml_backend_buffer_is_host.restype = ctypes.c_bool
        ggml.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
        self.ggml = ggml
        self.sums: dict[str, np.ndarray] = {}  # first member -> sum of x x^T
        self.members: dict[str, list[str]] = {}
        self.last_src1: int | None = None
        self.last_first: str | None = None
        self.error: BaseException | None = None

    def _op(self, op: int) -> str:
        if op not in self.op_name:
            self.op_name[op] = self.ggml.ggml_op_name(op).decode()
        return self.op_name[op]

    def __call__(self, t_ptr: int, ask: bool, _user: int) -> bool:
        try:
            t = _GgmlTensor.from_address(t_ptr)
            if self._op(t.op) != "MUL_MAT" or not t.src[0] or not t.src[1]:
                return False if ask else True
            name = _GgmlTensor.from_address(t.src[0]).name.decode(errors="replace")
            if name not in self.weights:
                return False if ask else True
            src1 = _GgmlTensor.from_address(t.src[1])
            if ask:
                return (src1.type == GGML_TYPE_F32 and src1.nb[0] == 4
                        and bool(self.ggml.ggml_backend_buffer_is_host(src1.buffer)))
            self._collect(name, t.src[1], src1)
        except BaseException as exc:  # an exception must not unwind through C; report it after decode
            self.error = exc
            return False
        return True

    def _collect(self, name: str, src1_ptr: int, src1: _GgmlTensor) -> None:
        if src1_ptr == self.last_src1 and self.last_first is not None:
            group = self.members[self.last_first]
            if name not in group:
                group.append(name)
            return
        ne, nb = list(src1.ne), list(src1.nb)
        span = sum((n - 1) * s for n, s in zip(ne, nb, strict=True)) + 4
        buf = (ctypes.c_char * span).from_address(src1.data)
        flat = np.frombuffer(buf, dtype=np.float32)
        x = np.lib.stride_tricks.as_strided(
            flat, shape=(ne[3], ne[2], ne[1], ne[0]), strides=(nb[3], nb[2], nb[1], nb[0]), writeable=False,
        ).reshape(-1, ne[0])  # [T, cols]
        xtx = x.T @ x  # [cols, cols]
        first = name
        self.members.setdefault(first, [name])
        if first in self.sums:
            self.sums[first] += xtx
        else:
            self.sums[first] = xtx.astype(np.float32)
        self.last_src1, self.last_first = src1_ptr, first

    def start_batch(self) -> None:
        self.last_src1 = self.last_first = None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep llama.cpp's own log lines (routed by llama-cpp-python's logger) off stderr."""
    lg = logging.getLogger("llama-cpp-python")
    before = lg.level
    lg.setLevel(logging.CRITICAL + 10)
    try:
        yield
    finally:
        lg.setLevel(before)


def check_loadable(gguf_path: Path, arch: str) -> None:
    """UnsupportedArchitectureError unless llama.cpp knows the file's architecture (a vocab-only load:
    hyperparameters and tokenizer, no weights)."""
    import llama_cpp

    with _quiet():
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
    if not model:
        raise UnsupportedArchitectureError(
            f"llama.cpp cannot load {Path(gguf_path).name} (architecture {arch!r}), so edgegen cannot compress it"
        )
    llama_cpp.llama_model_free(model)


def collect_hessians(
    gguf_path: Path,
    sequences: Sequence[Sequence[int]],
    weights: set[str],
    *,
    n_threads: int | None = 1,
    progress: Callable[[int, int], None] | None = None,
) -> GraphHessians:
    """Run llama.cpp over ``sequences`` (token ids, one context each) and collect H for ``weights``.

    Raises EngineError if llama.cpp cannot load or run the model.
    """
    import llama_cpp
    from llama_cpp import _ggml

    if not sequences:
        raise EngineError("no sequences to calibrate on")
    n = max(len(s) for s in sequences)
    col = _Collector(weights, _ggml.libggml)
    callback = llama_cpp.ggml_backend_sched_eval_callback(col)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    with _quiet():
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
    if not model:
        raise EngineError(f"llama.cpp could not load {gguf_path}")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max(n, 16)
    cparams.n_seq_max = 1
    threads = n_threads or 1
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    cparams.no_perf = True
    with _quiet():
        ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise EngineError(f"llama.cpp could not make a context for {gguf_path}")
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    tokens = 0
    try:
        for k, seq in enumerate(sequences):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = len(seq)
            for i, tok in enumerate(seq):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = int(tok), i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1  # every position an output: see the module docstring
            col.start_batch()
            rc = llama_cpp.llama_decode(ctx, batch)
            if col.error is not None:
                raise EngineError(f"collecting activations failed: {col.error}") from col.error
            if rc != 0:
                raise EngineError(f"llama.cpp failed to decode a calibration sequence (code {rc})")
            tokens += len(seq)
            if progress:
                progress(k + 1, len(sequences))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    hessians = {tuple(col.members[f]): s / max(tokens, 1) for f, s in col.sums.items()}
    return GraphHessians(hessians, tokens)
