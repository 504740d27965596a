"""Importance scores for structured pruning, measured on calibration text with our torch forward.

    score(model, sequences) -> Importance

Which scores, and why:

    width  Minitron's activation-based importance (Muralidharan et al. 2024, "Compact Language
           Models via Pruning and Knowledge Distillation", arXiv:2407.14679, section 2.2): an FFN
           channel j scores mean over tokens of |m_j| (m = silu(gate) * up, the input of ffn_down); an
           attention head scores the L2 norm of its output (the head's slice of attn_output's input)
           averaged over tokens; a KV group sums the heads that read it. Minitron found these
           forward-only scores as good as gradient ones at a fraction of the cost, and chose them over
           weight-magnitude scores; Wanda's |W| * ||X|| (Sun et al. 2023, arXiv:2306.11695) is for
           unstructured sparsity, which llama.cpp cannot turn into speed.
    depth  ShortGPT's Block Influence (Men et al. 2024, arXiv:2403.03853): BI_i = 1 - mean over
           tokens of cos(x_i, x_{i+1}), x_i the residual stream entering block i. A block that barely
           turns the residual stream is the cheapest to remove; ShortGPT reports BI beats removing by
           position or by perplexity change, and it needs one forward pass.

    global Width scores that compare across blocks, for per-layer widths (``plan``, ``per_layer``): the
           mean norm of what the unit adds to the residual stream (FFN channel j: |m_j| * ||W_down[:, j]||;
           head h: ||W_o[:, h] a_h||, summed over a KV group's heads), divided by the mean norm of the
           stream entering that sub-layer. Minitron's own scores rank units within a block, but their
           scale follows each block's activations; dividing the update by the stream it joins is
           ShortGPT's idea (a block matters as much as it turns the stream) brought down to units.

Scores are float64 numpy arrays indexed as the GGUF's own rows (``compress.forward`` runs on GGUF
tensors, q/k rows in llama.cpp's layout, where each head's rows stay contiguous). This module runs the
model; it neither chooses what to remove (``plan``) nor writes files (``apply``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgegen.compress.forward import LlamaForward
from edgegen.errors import InvalidTextError, UnsupportedArchitectureError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Importance:
    ffn: np.ndarray  # [n_layer, n_ff] mean |activation| per FFN channel
    heads: np.ndarray  # [n_layer, n_head] mean L2 norm of each head's output
    kv_groups: np.ndarray  # [n_layer, n_head_kv] sum of the scores of the heads in the group
    block_influence: np.ndarray  # [n_layer] ShortGPT BI, in [0, 2]
    n_tokens: int
    ffn_global: np.ndarray | None = None  # [n_layer, n_ff] channel's update norm / stream norm
    kv_global: np.ndarray | None = None  # [n_layer, n_head_kv] group's update norm / stream norm
    stream_norms: np.ndarray | None = None  # [n_layer, 2] mean ||x|| entering attention and the FFN


class _Scorer:
    """The forward's ``Observer``: accumulates FFN/head activations and the residual stream per block."""

    def __init__(self, model: LlamaForward):
        hp = model.hp
        self.hp = hp
        self.n_ff = model.w["blk.0.ffn_down.weight"].shape[1]
        self.ffn = torch.zeros(hp.n_layer, self.n_ff, dtype=torch.float64)
        self.heads = torch.zeros(hp.n_layer, hp.n_head, dtype=torch.float64)
        self.bi = torch.zeros(hp.n_layer, dtype=torch.float64)
        self.head_update = torch.zeros(hp.n_layer, hp.n_head, dtype=torch.float64)  # sum over tokens of ||W_o,h a_h||
        self.stream_attn = torch.zeros(hp.n_layer, dtype=torch.float64)  # sum of ||x|| entering attention
        self.stream_ffn = torch.zeros(hp.n_layer, dtype=torch.float64)  # sum of ||x|| entering the FFN
        self.w = model.w
        self.tokens = 0
        self.x: torch.Tensor | None = None  # residual stream [T, D] entering the current block
        self.x_in: torch.Tensor | None = None  # residual stream entering the block being scored

    def embedding(self, ids: torch.Tensor, x: torch.Tensor) -> None:
        self.x = x.detach().double()

    def inputs(self, names: tuple[str, ...], x: torch.Tensor) -> None:
        name = names[0]
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        if name.endswith("ffn_down.weight"):
            self.ffn[layer] += x.detach().abs().double().sum(0)
            assert self.x is not None
            self.stream_ffn[layer] += self.x.norm(dim=-1).sum()
        elif name.endswith("attn_output.weight"):
            T, H, hd = x.shape[0], self.hp.n_head, self.hp.head_dim
            per_head = x.detach().double().view(T, H, hd)  # [T, H, hd]
            self.heads[layer] += per_head.norm(dim=-1).sum(0)
            wo = self.w[name].detach().double().view(-1, H, hd)  # [D, H, hd]
            self.head_update[layer] += torch.einsum("thk,dhk->thd", per_head, wo).norm(dim=-1).sum(0)
        elif name.endswith("attn_q.weight"):
            self.x_in = self.x
            assert self.x is not None
            self.stream_attn[layer] += self.x.norm(dim=-1).sum()

    def output(self, name: str, y: torch.Tensor) -> None:
        if not name.startswith("blk."):
            return
        assert self.x is not None
        if name.endswith("attn_output.weight") or name.endswith("ffn_down.weight"):
            self.x = self.x + y.detach().double()  # the residual adds; x_{i+1} = x_i + attn + ffn
        if name.endswith("ffn_down.weight"):
            assert self.x_in is not None
            layer = int(name.split(".")[1])
            cos = torch.nn.functional.cosine_similarity(self.x_in, self.x, dim=-1)  # [T]
            self.bi[layer] += (1.0 - cos).sum()


def score(model: LlamaForward, sequences: Sequence[Sequence[int]], progress: Progress | None = None) -> Importance:
    """Importance of every FFN channel, head, KV group and block over ``sequences`` of token ids.

    Raises InvalidTextError when there is no sequence to score on.
    """
    if not model.hp.uniform:
        raise UnsupportedArchitectureError(
            "this model already has per-layer widths (deci); prune its uniform source instead")
    if not sequences or not any(len(s) for s in sequences):
        raise InvalidTextError("the calibration text gave no token sequences to score pruning on")
    scorer = _Scorer(model)
    hp = model.hp
    with torch.no_grad():
        for i, seq in enumerate(sequences):
            model(torch.tensor(list(seq), dtype=torch.long), scorer, head=False)
            scorer.tokens += len(seq)
            if progress:
                progress(i + 1, len(sequences))
    n = max(scorer.tokens, 1)
    heads = (scorer.heads / n).numpy()
    group = hp.n_head // hp.n_head_kv
    down_norms = torch.stack([model.w[f"blk.{i}.ffn_down.weight"].double().norm(dim=0)
                              for i in range(hp.n_layer)])  # [n_layer, n_ff] ||W_down[:, j]||
    ffn_update = scorer.ffn / n * down_norms  # mean ||m_j W_down[:, j]|| = mean|m_j| * ||W_down[:, j]||
    stream_ffn = (scorer.stream_ffn / n).clamp_min(1e-12)[:, None]
    stream_attn = (scorer.stream_attn / n).clamp_min(1e-12)[:, None]
    head_global = (scorer.head_update / n / stream_attn).numpy()
    return Importance(
        ffn=(scorer.ffn / n).numpy(),
        heads=heads,
        kv_groups=heads.reshape(hp.n_layer, hp.n_head_kv, group).sum(-1),
        block_influence=(scorer.bi / n).numpy(),
        n_tokens=scorer.tokens,
        ffn_global=(ffn_update / stream_ffn).numpy(),
        kv_global=head_global.reshape(hp.n_layer, hp.n_head_kv, group).sum(-1),
        stream_norms=torch.cat([stream_attn, stream_ffn], dim=1).numpy(),
    )
