"""Structured pruning keeps a model that llama.cpp loads, computes what masking the source computes,
and changes nothing when told to keep everything."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegen.compress.forward import open_forward
from edgegen.errors import PruneTargetError
from edgegen.formats.gguf_file import open_reader
from edgegen.prune import Importance, PrunePlan, PruneTarget, Shape, make_plan, prune
from edgegen.prune.apply import write_pruned
from edgegen.prune.pruner import model_shape
from edgegen.runtime.engine import Engine
from tests.conftest import STORIES_TEXT

IDS = [1, 5, 77, 300, 12, 9, 401, 33, 250, 18, 7, 99, 120, 64, 3, 480]


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    with Engine(path, n_ctx=64, n_batch=64, logits_all=True, n_threads=1) as e:
        return e.logits(ids).astype(np.float64)


def _masked_source_logits(src: Path, plan: PrunePlan, ids: list[int]) -> np.ndarray:
    """The source model with the pruned units zeroed out: what pruning must compute."""
    _r, _m, fwd = open_forward(src)
    s, hd = plan.source, plan.source.head_dim
    kept = {layer: j for j, layer in enumerate(plan.layers)}
    for i in range(s.n_layer):
        o, d = fwd.w[f"blk.{i}.attn_output.weight"], fwd.w[f"blk.{i}.ffn_down.weight"]
        if i not in kept:  # a dropped block adds nothing to the residual stream
            o.zero_()
            d.zero_()
            continue
        heads = set(plan.heads(kept[i]))
        for h in range(s.n_head):
            if h not in heads:
                o[:, h * hd:(h + 1) * hd] = 0
        gone = sorted(set(range(s.n_ff)) - set(plan.ffn[kept[i]]))
        d[:, gone] = 0
    with torch.no_grad():
        return fwd(torch.tensor(ids)).double().numpy()


@st.composite
def prune_plans(draw: st.DrawFn, shape: Shape) -> PrunePlan:
    layers = draw(st.lists(st.integers(0, shape.n_layer - 1), min_size=1, unique=True))
    n_ff = draw(st.sampled_from(range(32, shape.n_ff + 1, 32)))
    n_kv = draw(st.integers(1, shape.n_head_kv))
    ffn = tuple(tuple(sorted(draw(st.permutations(range(shape.n_ff)))[:n_ff])) for _ in layers)
    kv = tuple(tuple(sorted(draw(st.permutations(range(shape.n_head_kv)))[:n_kv])) for _ in layers)
    group = shape.n_head // shape.n_head_kv
    kept = Shape(len(layers), n_ff, n_kv * group, n_kv, shape.n_embd, shape.head_dim)
    return PrunePlan(layers=tuple(sorted(layers)), ffn=ffn, kv_groups=kv, source=shape, kept=kept)


TINY_SHAPE = Shape(n_layer=2, n_ff=128, n_head=4, n_head_kv=2, n_embd=64, head_dim=16)  # conftest's tiny_llama_hf


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=prune_plans(TINY_SHAPE))
def test_random_prune_masks_load_in_llama_cpp_and_equal_masking(tiny_gguf: Path, plan: PrunePlan) -> None:
    reader = open_reader(tiny_gguf)
    _r, _m, src_fwd = open_forward(tiny_gguf)
    assert model_shape(src_fwd) == TINY_SHAPE
    with tempfile.TemporaryDirectory() as tmp:
        out = write_pruned(reader, plan, Path(tmp) / "pruned.gguf")
        _r2, _m2, fwd = open_forward(out)
        assert model_shape(fwd) == plan.kept  # metadata and tensors agree
        k = plan.kept
        assert fwd.w["blk.0.attn_q.weight"].shape == (k.n_head * k.head_dim, k.n_embd)
        assert fwd.w["blk.0.attn_k.weight"].shape == (k.n_head_kv * k.head_dim, k.n_embd)
        assert fwd.w[f"blk.{k.n_layer - 1}.ffn_down.weight"].shape == (k.n_embd, k.n_ff)
        with torch.no_grad():
            ours = fwd(torch.tensor(IDS)).double().numpy()
        llama = _llama_logits(out, IDS)  # llama.cpp loads and runs it
    assert llama.shape == (len(IDS), 512) and np.isfinite(llama).all()
    lr = llama - np.logaddexp.reduce(llama, axis=1, keepdims=True)
    lo = ours - np.logaddexp.reduce(ours, axis=1, keepdims=True)
    assert (np.exp(lr) * (lr - lo)).sum(1).mean() < 1e-4  # llama.cpp computes what our forward computes
    assert (llama.argmax(1) == ours.argmax(1)).mean() > 0.9
    np.testing.assert_allclose(ours, _masked_source_logits(tiny_gguf, plan, IDS), atol=1e-4, rtol=1e-4)


def test_prune_nothing_reproduces_the_source_logits(stories_gguf: Path, tmp_path: Path) -> None:
    report = prune(stories_gguf, tmp_path / "same.gguf", PruneTarget.parse("keep=1.0"),
                   calib_text=STORIES_TEXT * 4, seq_len=32, seqs=2)
    assert report.plan["block_weights_kept"] == 1.0
    ids = [1, *IDS[1:]]
    assert np.array_equal(_llama_logits(stories_gguf, ids), _llama_logits(tmp_path / "same.gguf", ids))


def test_real_scores_drop_the_least_influential_block(stories_gguf: Path, tmp_path: Path) -> None:
    report = prune(stories_gguf, tmp_path / "p.gguf", PruneTarget.parse("layers=4,ffn=128,kv=2"),
                   calib_text=STORIES_TEXT * 4, seq_len=32, seqs=2)
    bi = np.asarray(report.block_influence)
    assert sorted(set(range(5)) - set(report.plan["layers"])) == [int(np.argmin(bi))]
    _r, _m, fwd = open_forward(tmp_path / "p.gguf")
    assert model_shape(fwd) == Shape(4, 128, 4, 2, 64, 8)
    assert _llama_logits(tmp_path / "p.gguf", IDS).shape == (len(IDS), 512)


def test_plan_keeps_the_top_scoring_units() -> None:
    shape = Shape(n_layer=3, n_ff=64, n_head=4, n_head_kv=2, n_embd=32, head_dim=8)
    ffn = np.tile(np.arange(64, dtype=float), (3, 1))
    ffn[1, 0] = 1000.0
    imp = Importance(ffn=ffn, heads=np.ones((3, 4)), kv_groups=np.array([[1.0, 2.0], [3.0, 0.5], [1.0, 1.0]]),
                     block_influence=np.array([0.3, 0.1, 0.2]), n_tokens=10)
    plan = make_plan(imp, shape, PruneTarget.parse("layers=2,ffn=32,kv=1"))
    assert plan.layers == (0, 2)
    assert plan.ffn[0] == tuple(range(32, 64))
    assert plan.kv_groups == ((1,), (0,)) and plan.heads(0) == [2, 3]
    assert make_plan(imp, shape, PruneTarget.parse("keep=1")).is_identity


def test_keep_fraction_spends_width_before_depth() -> None:
    smol = Shape(n_layer=30, n_ff=1536, n_head=9, n_head_kv=3, n_embd=576, head_dim=64)
    mild = PruneTarget.parse("0.8").resolve(smol)
    assert mild.n_layer == 30 and mild.n_ff % 256 == 0 and mild.n_ff < 1536
    deep = PruneTarget.parse("keep=0.4").resolve(smol)
    assert deep.n_ff == 768 and deep.n_layer < 30
    assert deep.n_layer * deep.block_params() <= 0.4 * 30 * smol.block_params()


@pytest.mark.parametrize("spec", ["keep=0", "layers=0", "ffn=0", "kv=0", "layers=31", "ffn=1000", "keep=0.6,layers=3",
                                  "depth=3", "layers=x", "0.0001"])
def test_targets_that_remove_everything_or_make_no_sense(spec: str) -> None:
    smol = Shape(n_layer=30, n_ff=1536, n_head=9, n_head_kv=3, n_embd=576, head_dim=64)
    with pytest.raises(PruneTargetError):
        PruneTarget.parse(spec).resolve(smol)


def test_cli_prune_target_removing_everything_is_one_line_exit_2(stories_gguf: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "edgegen", "prune", str(stories_gguf), "-o", str(tmp_path / "x.gguf"),
                        "--target", "layers=0"], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "removes everything" in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "x.gguf").exists()
