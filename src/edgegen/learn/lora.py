"""LoRA factors over our torch Llama forward: local training, perplexity, and the arrays Flower ships.

    LoraSpec(rank, alpha, targets, train_a, seed)   what is adapted, and how
    load_base(gguf) -> LlamaForward                 the device's base model, dequantized to float32
    LoraModel(base, spec)
        .arrays() / .set_arrays(list)               the trained factors as numpy, in ``names`` order:
                                                    per adapted tensor, B [out, r] (and A [r, in] first
                                                    when ``train_a``); what a client sends each round
        .train(ids, steps=, seconds=, ...)          AdamW on next-token loss over random windows, with an
                                                    optional FedProx proximal term
        .nll(ids, seq, max_chunks) -> (sum, n)      next-token negative log-likelihood over chunks
        .pairs() -> {name: (A, B)}                  for ``formats.lora_gguf.write_lora_gguf``
    initial_arrays(gguf, spec)                      the round-0 global factors from tensor shapes only

The adapted weight is ``W + alpha/r * B @ A`` (Hu et al. 2021, arXiv:2106.09685), with llama.cpp's
tensor names and PEFT's factor layout, so the factors go into a GGUF adapter as they are. By default
A is frozen at a seed every party shares and only B is trained and sent (FFA-LoRA: Sun et al. 2024,
"Improving LoRA in Privacy-preserving Federated Learning", ICLR, arXiv:2403.12313): averaging B alone
is exact (the mean of ``B_i @ A`` is ``mean(B_i) @ A``, while ``mean(B_i) @ mean(A_i)`` is not the mean
of the products), it halves what a client sends, and DP noise lands on half the coordinates.

Not ``peft``: peft wraps the ``nn.Linear`` modules of a transformers model, and the device runs a GGUF
whose tensors our ``compress.forward`` executes directly (no module tree, llama.cpp's names and
layout); factors kept here by GGUF name need no name mapping back into the adapter file.
This module does no networking and writes no files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgegen.compress.forward import LlamaForward, open_forward
from edgegen.errors import InvalidModelError, InvalidTextError
from edgegen.formats.gguf_file import open_reader

__all__ = ["LoraModel", "LoraSpec", "TrainStats", "initial_arrays", "load_base", "target_shapes"]


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("attn_q", "attn_v")
    train_a: bool = False
    seed: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class TrainStats:
    steps: int
    seconds: float
    loss_first: float
    loss_last: float


def _is_target(name: str, targets: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[2] in targets and parts[3] == "weight"


def target_shapes(gguf: Path, spec: LoraSpec) -> dict[str, tuple[int, int]]:
    """{tensor name: (out, in)} of every adapted matrix, read from the GGUF header (no dequantizing)."""
    reader = open_reader(Path(gguf))
    shapes = {t.name: (int(t.shape[1]), int(t.shape[0])) for t in reader.tensors if _is_target(t.name, spec.targets)}
    if not shapes:
        raise InvalidModelError(f"{gguf} has no tensors blk.N.{{{','.join(spec.targets)}}}.weight to adapt")
    return dict(sorted(shapes.items()))


def _frozen_a(index: int, shape_in: int, spec: LoraSpec) -> torch.Tensor:
    """A [r, in] ~ N(0, 1/in), the same on every party for (seed, tensor index)."""
    g = torch.Generator().manual_seed(spec.seed * 100_003 + index)
    return torch.randn(spec.rank, shape_in, generator=g) / math.sqrt(shape_in)


def initial_arrays(gguf: Path, spec: LoraSpec) -> list[np.ndarray]:
    """The global factors before round 1: B = 0 (the adapter starts as the identity), A from the seed."""
    out: list[np.ndarray] = []
    for i, (_name, (n_out, n_in)) in enumerate(target_shapes(gguf, spec).items()):
        if spec.train_a:
            out.append(_frozen_a(i, n_in, spec).numpy())
        out.append(np.zeros((n_out, spec.rank), dtype=np.float32))
    return out


def load_base(gguf: Path) -> LlamaForward:
    """The base model of a GGUF file as float32 torch tensors (``compress.forward.open_forward``)."""
    return open_forward(gguf)[2]


class LoraModel:
    """A base forward plus LoRA factors on ``spec.targets``; ``fwd.w`` holds the merged weights."""

    def __init__(self, fwd: LlamaForward, spec: LoraSpec) -> None:
        self.fwd, self.spec = fwd, spec
        self.names = sorted(n for n in fwd.w if _is_target(n, spec.targets))
        if not self.names:
            raise InvalidModelError(f"the base has no tensors blk.N.{{{','.join(spec.targets)}}}.weight")
        self.base = {n: fwd.w[n] for n in self.names}
        self.A = {n: _frozen_a(i, self.base[n].shape[1], spec) for i, n in enumerate(self.names)}  # [r, in]
        self.B = {n: torch.zeros(self.base[n].shape[0], spec.rank) for n in self.names}  # [out, r]

    # ---- the factors as Flower arrays ------------------------------------------------------------

    def _params(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for n in self.names:
            if self.spec.train_a:
                out.append(self.A[n])
            out.append(self.B[n])
        return out

    def arrays(self) -> list[np.ndarray]:
        return [p.detach().numpy().astype(np.float32, copy=True) for p in self._params()]

    def set_arrays(self, arrays: list[np.ndarray]) -> None:
        params = self._params()
        if len(arrays) != len(params):
            raise InvalidModelError(f"{len(arrays)} arrays for {len(params)} LoRA factors")
        for p, a in zip(params, arrays):
            if tuple(a.shape) != tuple(p.shape):
                raise InvalidModelError(f"a LoRA factor of shape {tuple(a.shape)} where {tuple(p.shape)} is expected")
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))

    def pairs(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: (self.A[n].detach().numpy().copy(), self.B[n].detach().numpy().copy()) for n in self.names}

    # ---- forward, loss, training -----------------------------------------------------------------

    def _merge(self) -> None:
        s = self.spec.scale
        for n in self.names:
            self.fwd.w[n] = self.base[n] + s * (self.B[n] @ self.A[n])  # [out, in]

    def nll(self, ids: np.ndarray, seq: int, max_chunks: int) -> tuple[float, int]:
        """(summed next-token NLL in nats, tokens scored) over consecutive chunks of ``seq`` tokens."""
        n_chunks = min(max_chunks, len(ids) // seq)
        if n_chunks < 1:
            raise InvalidTextError(f"{len(ids)} tokens: fewer than one chunk of {seq}")
        total, n = 0.0, 0
        with torch.no_grad():
            self._merge()
            for c in range(n_chunks):
                x = torch.from_numpy(ids[c * seq:(c + 1) * seq].astype(np.int64))  # [T]
                total += float(F.cross_entropy(self.fwd(x)[:-1], x[1:], reduction="sum"))
                n += seq - 1
        return total, n

    def perplexity(self, ids: np.ndarray, seq: int, max_chunks: int) -> float:
        total, n = self.nll(ids, seq, max_chunks)
        return float(math.exp(total / n))

    def train(self, ids: np.ndarray, *, steps: int, seconds: float | None = None, seq: int = 64, lr: float = 1e-3,
              prox_mu: float = 0.0, seed: int = 0) -> TrainStats:
        """At most ``steps`` AdamW steps (and at most ``seconds`` of wall time) on random windows.

        ``prox_mu > 0`` adds FedProx's proximal term ``mu/2 * ||w - w_global||^2`` over the trained
        factors, ``w_global`` being their values on entry (Li et al. 2020, arXiv:1812.06127)."""
        if len(ids) < seq + 1:
            raise InvalidTextError(f"{len(ids)} training tokens: fewer than one window of {seq}")
        params = self._params()
        start = [p.detach().clone() for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        losses: list[float] = []
        t0 = time.monotonic()
        for _ in range(steps):
            if seconds is not None and losses and time.monotonic() - t0 >= seconds:
                break
            self._merge()
            i = int(rng.integers(0, len(ids) - seq - 1))
            x = torch.from_numpy(ids[i:i + seq].astype(np.int64))  # [T]
            loss = F.cross_entropy(self.fwd(x)[:-1], x[1:])
            objective = loss
            if prox_mu > 0:
                objective = loss + 0.5 * prox_mu * sum(((p - s) ** 2).sum() for p, s in zip(params, start))
            opt.zero_grad()
            objective.backward()
            opt.step()
            losses.append(loss.item())
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            self._merge()
        return TrainStats(steps=len(losses), seconds=round(time.monotonic() - t0, 3),
                          loss_first=losses[0], loss_last=losses[-1])
