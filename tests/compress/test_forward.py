"""Our torch forward over GGUF tensors computes what llama.cpp computes (so calibration sees the real model)."""

from __future__ import annotations

import numpy as np
import torch

from edgegen.compress.calibrate import calibrate, token_sequences
from edgegen.compress.forward import load_forward
from edgegen.formats.gguf_file import open_reader
from edgegen.runtime.engine import Engine
from tests.conftest import STORIES_TEXT


def test_forward_matches_llama_cpp_and_calibration_shapes(stories_gguf):
    reader = open_reader(stories_gguf)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    model = load_forward(reader, meta)
    with Engine(stories_gguf, n_ctx=128, logits_all=True) as e:
        ids = e.tokenize(STORIES_TEXT)[:64]
        ref = e.logits(ids).astype(np.float64)
    with torch.no_grad():
        ours = model(torch.tensor(ids)).numpy().astype(np.float64)
    lr = ref - np.logaddexp.reduce(ref, axis=1, keepdims=True)
    lo = ours - np.logaddexp.reduce(ours, axis=1, keepdims=True)
    assert (np.exp(lr) * (lr - lo)).sum(1).mean() < 1e-3
    assert (ref.argmax(1) == ours.argmax(1)).mean() > 0.95

    cal = calibrate(model, token_sequences(ids, 32, 2, None), fisher_seqs=1)
    q = cal.stats["blk.0.attn_q.weight"]
    assert q.hessian is cal.stats["blk.0.attn_k.weight"].hessian  # shared input, shared Hessian
    assert q.hessian.shape == (64, 64) and np.allclose(q.hessian, q.hessian.T, atol=1e-5)
    assert q.fisher is not None and q.fisher.shape == (model.w["blk.0.attn_q.weight"].shape[0],)
    emb = cal.stats["token_embd.weight"]
    assert emb.input_fisher is not None and emb.input_fisher[ids[:32]].sum() > 0
    unseen = sorted(set(range(emb.input_fisher.shape[0])) - set(ids))
    assert emb.input_fisher[unseen].sum() == 0
