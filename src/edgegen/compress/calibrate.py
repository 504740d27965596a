"""Calibration: run the full-precision model over text and collect what the quantizer needs.

For every 2-D weight W [rows, cols] that a matmul consumes (GGUF names and layout):

    hessian   H = mean over tokens of x x^T, x the matmul's input [cols, cols]; its diagonal is the
              per-column mean square ("importance"). Shared by weights that read the same input.
    fisher    f = mean over tokens of g^2 per output row, g the gradient of log p(y) at the matmul's
              output with y sampled from the model itself; so that for a weight error E the expected
              rise in KL divergence per token is about 0.5 * sum_r f_r * E_r H E_r^T.

Where each comes from is the caller's choice (``plan.run_calibration``): the Hessians from llama.cpp's
own graph (``graph_stats``, any architecture), the gradients from this module's torch forward
(``forward``, the llama family only: llama.cpp computes no gradients). ``calibrate`` here can also
collect the Hessians itself, which the tests use as the differential check of ``graph_stats``.

For the token embedding also the input side: ``input_fisher[v, c]``, the summed squared gradient at
the embedding output over the positions holding token v (divided by the token count), so an error E
in row v costs about 0.5 * sum_c input_fisher[v, c] * E[v, c]^2.

Gradients are taken on the first ``fisher_seqs`` sequences only (a backward pass costs two forwards);
the Hessians use all of them. This module reads no files and writes none: it gets a ``LlamaForward``
and token ids (or, in ``lookup_importance``, only token ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from edgegen.compress.forward import LlamaForward
from edgegen.errors import InvalidTextError

Progress = Callable[[int, int], None]


@dataclass
class TensorStats:
    hessian: np.ndarray  # [cols, cols] float32, mean x x^T (may be shared with sibling weights)
    fisher: np.ndarray | None = None  # [rows] float64, mean squared output gradient
    input_fisher: np.ndarray | None = None  # [rows, cols] float32 (token embedding only)


@dataclass
class Calibration:
    stats: dict[str, TensorStats] = field(default_factory=dict)
    n_tokens: int = 0
    n_fisher_tokens: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # statistic -> where it came from

    def get(self, name: str) -> TensorStats | None:
        return self.stats.get(name)


class _Collector:
    """The ``Observer`` that accumulates Hessians and squared gradients."""

    def __init__(self, vocab: int, dim: int, embd_name: str, hessians: bool = True):
        self.hessians = hessians
        self.h_sum: dict[tuple[str, ...], torch.Tensor] = {}
        self.f_sum: dict[str, torch.Tensor] = {}
        self.emb_sum = torch.zeros(vocab, dim, dtype=torch.float32)
        self.embd_name = embd_name
        self.tokens = 0
        self.fisher_tokens = 0

    def inputs(self, names: tuple[str, ...], x: torch.Tensor) -> None:
        if not self.hessians:
            return
        xd = x.detach()
        xtx = xd.T @ xd
        if names in self.h_sum:
            self.h_sum[names] += xtx
        else:
            self.h_sum[names] = xtx

    def output(self, name: str, y: torch.Tensor) -> None:
        if y.requires_grad:
            y.register_hook(lambda g, name=name: self._grad(name, g))

    def _grad(self, name: str, g: torch.Tensor) -> None:
        sq = g.detach().pow(2).sum(0).double()
        if name in self.f_sum:
            self.f_sum[name] += sq
        else:
            self.f_sum[name] = sq

    def embedding(self, ids: torch.Tensor, x: torch.Tensor) -> None:
        if x.requires_grad:
            x.register_hook(lambda g: self._emb_grad(ids, g))

    def _emb_grad(self, ids: torch.Tensor, g: torch.Tensor) -> None:
        self.emb_sum.index_add_(0, ids, g.detach().pow(2))


def token_sequences(tokens: Sequence[int], seq_len: int, n_seqs: int, bos: int | None) -> list[list[int]]:
    """Up to ``n_seqs`` sequences of ``seq_len`` tokens, evenly spread over the text, BOS first if used."""
    body = seq_len - (1 if bos is not None else 0)
    available = len(tokens) // body
    if available == 0:
        raise InvalidTextError(
            f"the calibration text has {len(tokens)} tokens, fewer than one sequence of {seq_len}"
        )
    starts = np.linspace(0, available - 1, num=min(n_seqs, available)).round().astype(int) * body
    head = [bos] if bos is not None else []
    return [head + list(tokens[s : s + body]) for s in starts]


def calibrate(
    model: LlamaForward,
    sequences: Sequence[Sequence[int]],
    *,
    fisher_seqs: int = 4,
    seed: int = 0,
    progress: Progress | None = None,
    hessians: bool = True,
) -> Calibration:
    """Collect Hessians for every matmul weight and Fisher diagonals on the first ``fisher_seqs``.

    With ``hessians=False`` only the gradient statistics are kept (``fisher``, ``input_fisher``; each
    ``TensorStats.hessian`` is then an empty [0, 0] placeholder), for when the Hessians come from
    llama.cpp's graph (``graph_stats``).
    """
    if not sequences:
        raise InvalidTextError("the calibration text gave no token sequences")
    embd = model.w["token_embd.weight"]
    col = _Collector(embd.shape[0], embd.shape[1], "token_embd.weight", hessians)
    gen = torch.Generator().manual_seed(seed)
    for i, seq in enumerate(sequences):
        ids = torch.tensor(list(seq), dtype=torch.long)
        if i < fisher_seqs:
            logits = model(ids, col, grad=True)
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen)
            torch.log_softmax(logits, -1).gather(1, y).sum().backward()
            col.fisher_tokens += len(seq)
            del logits
        else:
            with torch.no_grad():
                model(ids, col, head=False)
        col.tokens += len(seq)
        if progress:
            progress(i + 1, len(sequences))
    return _finish(col)


def _finish(col: _Collector) -> Calibration:
    cal = Calibration(n_tokens=col.tokens, n_fisher_tokens=col.fisher_tokens)
    for names, h in col.h_sum.items():
        hess = (h / col.tokens).numpy().astype(np.float32)
        for name in names:
            cal.stats[name] = TensorStats(hessian=hess)
    if col.fisher_tokens:
        for name, f in col.f_sum.items():
            if name not in cal.stats:
                cal.stats[name] = TensorStats(hessian=np.zeros((0, 0), np.float32))
            cal.stats[name].fisher = (f / col.fisher_tokens).numpy()
        emb = cal.stats.get(col.embd_name)
        if emb is None:  # untied: the embedding is only looked up
            emb = cal.stats[col.embd_name] = TensorStats(hessian=np.zeros((0, 0), np.float32))
        emb.input_fisher = (col.emb_sum / col.fisher_tokens).numpy()
    return cal


def lookup_importance(sequences: Sequence[Sequence[int]], vocab: int, dim: int) -> np.ndarray:
    """Gradient-free stand-in for the embedding's ``input_fisher`` [vocab, dim]: each row's share of
    the calibration tokens (add-one smoothed, so tokens the text lacks are not free to ruin),
    broadcast over the columns (a read-only view, no [vocab, dim] copy).

    An error E_v in embedding row v moves the residual stream by E_v at every position holding v, so
    the mean squared perturbation per token is sum_v share_v * |E_v|^2: the same units as the
    output-error loss E H E^T of the other weights when no Fisher weights them.
    """
    counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in sequences]), minlength=vocab)[:vocab]
    share = ((counts + 1) / (int(counts.sum()) + vocab)).astype(np.float32)  # add-one: unseen rows still count
    return np.broadcast_to(share[:, None], (vocab, dim))
