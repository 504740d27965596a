"""A Llama-family forward pass in torch, straight from GGUF tensors, with a seam for calibration.

llama.cpp's ``llama`` graph (also ``mistral``; ``qwen2`` adds q/k/v biases and NEOX rotary; ``deci``
reads per-layer head counts and FFN widths, and a block with no heads is attention-free) on
weights named and laid out as in the GGUF file, so statistics collected here index the GGUF's own
rows and columns: no Hugging Face name mapping, no q/k row permutation to undo. The ``Observer``
sees each distinct matmul input once (with every GGUF weight that consumes it) and each matmul
output (whose gradient it may hook). Architectures outside this family are refused.

This module runs models; it does not quantize, tokenize or write anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from edgegen.errors import UnsupportedArchitectureError

ROPE_NORM = {"llama", "mistral", "deci"}  # adjacent pairs (the converter permuted q/k rows for this)
ROPE_NEOX = {"qwen2"}  # halves
SUPPORTED = ROPE_NORM | ROPE_NEOX


class Observer(Protocol):
    def inputs(self, names: tuple[str, ...], x: torch.Tensor) -> None: ...  # x [T, in]

    def output(self, name: str, y: torch.Tensor) -> None: ...  # y [T, out]

    def embedding(self, ids: torch.Tensor, x: torch.Tensor) -> None: ...  # x [T, dim]


@dataclass(frozen=True)
class HParams:
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd: int
    eps: float
    rope_base: float
    rope_dim: int
    tied: bool
    key_length: int = 0  # per-head size when the GGUF states it (attention.key_length); 0: n_embd / n_head
    layer_heads: tuple[int, ...] = ()  # per block, when the GGUF gives an array (deci); () : n_head everywhere
    layer_heads_kv: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head

    def heads(self, i: int) -> int:
        """Query heads of block i (0: an attention-free block, as llama.cpp's ``deci`` runs it)."""
        return self.layer_heads[i] if self.layer_heads else self.n_head

    def heads_kv(self, i: int) -> int:
        return self.layer_heads_kv[i] if self.layer_heads_kv else self.n_head_kv

    @property
    def uniform(self) -> bool:
        """Every block has the same heads (what a uniform prune plan and the importance scorer need)."""
        heads, kv = self.layer_heads or (self.n_head,), self.layer_heads_kv or (self.n_head_kv,)
        return len(set(heads)) == 1 and len(set(kv)) == 1


def _per_layer(value: Any, n_layer: int, key: str) -> tuple[int, ...]:
    """A GGUF hyper-parameter that llama.cpp reads as a scalar or a per-layer array (get_key_or_arr)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        out = tuple(int(v) for v in value)
        if len(out) != n_layer:
            raise UnsupportedArchitectureError(f"{key} has {len(out)} entries for {n_layer} blocks")
        return out
    return (int(value),) * n_layer


def hparams(meta: dict[str, Any], tensor_names: Iterable[str]) -> HParams:
    """Read the hyper-parameters the forward needs from GGUF metadata."""
    arch = str(meta.get("general.architecture", "?"))
    if arch not in SUPPORTED:
        raise UnsupportedArchitectureError(
            f"calibration supports the {', '.join(sorted(SUPPORTED))} architectures, not {arch!r}"
        )
    names = set(tensor_names)

    def get(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise UnsupportedArchitectureError(f"the GGUF has no {arch}.{key}")
        return v

    n_layer, n_embd = int(get("block_count")), int(get("embedding_length"))
    heads = _per_layer(get("attention.head_count"), n_layer, "attention.head_count")
    heads_kv = _per_layer(get("attention.head_count_kv", heads), n_layer, "attention.head_count_kv")
    n_ff = _per_layer(get("feed_forward_length", 1), n_layer, "feed_forward_length")
    for i, (h, kv, ff) in enumerate(zip(heads, heads_kv, n_ff)):
        # llama.cpp's deci graph skips the whole block (attention too) when its FFN width is 0, and
        # reads a block with heads but no KV heads as Nemotron's "linear attention": neither is ours
        if ff == 0 or (h > 0 and kv == 0) or (kv and h % kv) or (i == 0 and h == 0):
            raise UnsupportedArchitectureError(
                f"block {i} has {h} heads, {kv} KV heads and FFN width {ff}: the forward runs blocks with an "
                f"FFN and either no attention or whole KV groups (block 0 must have heads)")
    n_head = heads[0]
    key_length = int(get("attention.key_length", 0))
    scaling = str(meta.get(f"{arch}.rope.scaling.type", "none"))
    if scaling not in ("none", "") or "rope_freqs.weight" in names:
        raise UnsupportedArchitectureError(f"rotary scaling ({scaling or 'rope_freqs'}) is not supported")
    return HParams(
        arch=arch,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=heads_kv[0],
        n_embd=n_embd,
        eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(get("rope.freq_base", 10000.0)),
        rope_dim=int(get("rope.dimension_count", key_length or n_embd // n_head)),
        tied="output.weight" not in names,
        key_length=key_length,
        layer_heads=heads if len(set(heads)) > 1 else (),
        layer_heads_kv=heads_kv if len(set(heads_kv)) > 1 else (),
    )


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class LlamaForward:
    """Callable ``(ids [T], observer) -> logits [T, vocab]`` over float32 weights in GGUF layout."""

    def __init__(self, hp: HParams, weights: dict[str, torch.Tensor]):
        self.hp, self.w = hp, weights
        out = "token_embd.weight" if hp.tied else "output.weight"
        self.output_name = out
        for name in ["token_embd.weight", "output_norm.weight", out]:
            if name not in weights:
                raise UnsupportedArchitectureError(f"the GGUF has no tensor {name}")

    def _lin(self, name: str, x: torch.Tensor, obs: Observer | None) -> torch.Tensor:
        y = x @ self.w[name].T
        bias = self.w.get(name.replace(".weight", ".bias"))
        if bias is not None:
            y = y + bias
        if obs is not None:
            obs.output(name, y)
        return y

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [T, heads, head_dim] rotated as llama.cpp does for this architecture."""
        hp = self.hp
        d = hp.rope_dim
        inv = hp.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
        ang = pos[:, None].float() * inv[None, :]  # [T, d/2]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        rot, rest = x[..., :d], x[..., d:]
        if hp.arch in ROPE_NORM:
            a, b = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        else:
            a, b = rot[..., : d // 2], rot[..., d // 2 :]
            out = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        return torch.cat([out, rest], dim=-1)

    def _attention(self, p: str, x: torch.Tensor, pos: torch.Tensor, n_head: int, n_head_kv: int,
                   obs: Observer | None) -> torch.Tensor:
        """Block ``p``'s attention output [T, D] (before the residual add) for stream x [T, D]."""
        T, hd = x.shape[0], self.hp.head_dim
        h = _rms_norm(x, self.w[p + "attn_norm.weight"], self.hp.eps)
        names = (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
        if obs is not None:
            obs.inputs(names, h)
        q = self._rope(self._lin(names[0], h, obs).view(T, n_head, hd), pos)
        k = self._rope(self._lin(names[1], h, obs).view(T, n_head_kv, hd), pos)
        v = self._lin(names[2], h, obs).view(T, n_head_kv, hd)
        group = n_head // n_head_kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        a = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=1 / math.sqrt(hd)
        )  # [H, T, hd]
        a = a.transpose(0, 1).reshape(T, n_head * hd)
        if obs is not None:
            obs.inputs((p + "attn_output.weight",), a)
        return self._lin(p + "attn_output.weight", a, obs)

    def __call__(
        self, ids: torch.Tensor, obs: Observer | None = None, *, grad: bool = False, head: bool = True
    ) -> torch.Tensor:
        """Logits [T, vocab]; with ``head=False`` the final normed hidden state [T, D] instead."""
        hp, w = self.hp, self.w
        pos = torch.arange(ids.shape[0])
        x = w["token_embd.weight"][ids].clone()  # [T, D]
        if grad:
            x.requires_grad_(True)
        if obs is not None:
            obs.embedding(ids, x)
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            if hp.heads(i):  # else an attention-free block (deci): the FFN reads the stream as it is
                x = x + self._attention(p, x, pos, hp.heads(i), hp.heads_kv(i), obs)
            h = _rms_norm(x, w[p + "ffn_norm.weight"], hp.eps)
            names = (p + "ffn_gate.weight", p + "ffn_up.weight")
            if obs is not None:
                obs.inputs(names, h)
            m = F.silu(self._lin(names[0], h, obs)) * self._lin(names[1], h, obs)
            if obs is not None:
                obs.inputs((p + "ffn_down.weight",), m)
            x = x + self._lin(p + "ffn_down.weight", m, obs)
        h = _rms_norm(x, w["output_norm.weight"], hp.eps)
        if obs is not None:
            obs.inputs((self.output_name,), h)
        return self._lin(self.output_name, h, obs) if head else h


def load_forward(reader: Any, meta: dict[str, Any]) -> LlamaForward:
    """Dequantize every tensor of an open GGUF (gguf-py reader) into float32 torch tensors."""
    import gguf

    hp = hparams(meta, (t.name for t in reader.tensors))
    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        weights[t.name] = torch.from_numpy(arr.copy())
    return LlamaForward(hp, weights)


def open_forward(path: Path | str) -> tuple[Any, dict[str, Any], LlamaForward]:
    """(gguf-py reader, metadata without the ``tokenizer.*`` keys, float32 ``LlamaForward``) of a GGUF file.

    Raises ``ModelNotFoundError`` / ``InvalidModelError`` for a missing or malformed file and
    ``UnsupportedArchitectureError`` for an architecture outside the llama family.
    """
    from edgegen.formats.gguf_file import validate_gguf

    reader = validate_gguf(Path(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    return reader, meta, load_forward(reader, meta)
