"""Hessians read from llama.cpp's graph (cb_eval) agree with the torch forward's, weight by weight.

The differential check of ``graph_stats``: both paths run stories260K (F32) over the same tokens;
every weight matmul's input Hessian must match (llama.cpp keeps its KV cache in F16, so the inputs of
``attn_output`` differ by ~1e-3 relative). The negative control shows the comparison has teeth: the
Hessian of a neighbouring weight is far outside the tolerance.
"""

from __future__ import annotations

import numpy as np

from edgegen.compress.calibrate import calibrate, lookup_importance, token_sequences
from edgegen.compress.forward import load_forward
from edgegen.compress.graph_stats import collect_hessians
from edgegen.formats.gguf_file import open_reader
from edgegen.runtime.engine import Engine
from tests.conftest import STORIES_TEXT

TOL = 5e-3


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_graph_hessians_match_the_torch_forward(stories_gguf):
    reader = open_reader(stories_gguf)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    with Engine(stories_gguf, n_ctx=128) as e:
        ids = e.tokenize(STORIES_TEXT * 3, add_bos=False)
    seqs = token_sequences(ids, 48, 3, 1)
    torch_cal = calibrate(load_forward(reader, meta), seqs, fisher_seqs=0)
    names = {t.name for t in reader.tensors}
    graph = collect_hessians(stories_gguf, seqs, names)
    ours = graph.by_name()

    want = {n: st.hessian for n, st in torch_cal.stats.items() if st.hessian.size}
    assert set(ours) == set(want)  # every weight matmul, the (tied or untied) output head included
    assert graph.n_tokens == torch_cal.n_tokens == sum(len(s) for s in seqs)
    for name, h in want.items():
        assert ours[name].shape == h.shape
        assert _rel(ours[name], h) < TOL, name
    assert ours["blk.0.attn_q.weight"] is ours["blk.0.attn_v.weight"]  # one input, one Hessian
    assert ours["blk.0.ffn_gate.weight"] is ours["blk.0.ffn_up.weight"]
    assert ours["blk.0.ffn_down.weight"] is not ours["blk.0.ffn_up.weight"]
    # negative control: a neighbouring weight's Hessian is nowhere near
    assert _rel(ours["blk.1.attn_q.weight"], want["blk.0.attn_q.weight"]) > 10 * TOL


def test_lookup_importance_counts_tokens_without_a_copy():
    imp = lookup_importance([[1, 2, 2], [2, 5]], vocab=8, dim=4)
    assert imp.shape == (8, 4) and imp.strides[1] == 0
    assert np.allclose(imp[:, 0], np.array([1, 2, 4, 1, 1, 2, 1, 1]) / 13)
