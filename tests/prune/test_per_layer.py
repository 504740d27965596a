"""Per-layer widths: a plan that gives every block its own FFN width and KV groups is written as
llama.cpp's ``deci``, which llama.cpp loads and runs, computing what our forward and the masked source
compute; the global threshold spends the uniform plan's totals where the importance is."""

from __future__ import annotations

import json
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
from edgegen.errors import PruneTargetError, UnsupportedArchitectureError
from edgegen.formats.gguf_file import field_value, open_reader
from edgegen.prune import Importance, PrunePlan, PruneTarget, Shape, make_plan, prune
from edgegen.prune.apply import write_pruned
from edgegen.prune.plan import threshold_widths
from edgegen.prune.pruner import model_shape
from edgegen.runtime.engine import Engine
from tests.conftest import STORIES_TEXT
from tests.prune.test_prune import IDS, TINY_SHAPE, _llama_logits, _masked_source_logits


@st.composite
def per_layer_plans(draw: st.DrawFn, shape: Shape) -> PrunePlan:
    layers = sorted(draw(st.lists(st.integers(0, shape.n_layer - 1), min_size=1, unique=True)))
    ffn, kv = [], []
    for j in range(len(layers)):
        n_ff = draw(st.sampled_from(range(32, shape.n_ff + 1, 32)))
        n_kv = draw(st.integers(1 if j == 0 else 0, shape.n_head_kv))  # 0: an attention-free block
        ffn.append(tuple(sorted(draw(st.permutations(range(shape.n_ff)))[:n_ff])))
        kv.append(tuple(sorted(draw(st.permutations(range(shape.n_head_kv)))[:n_kv])))
    group = shape.n_head // shape.n_head_kv
    wide = max(len(k) for k in kv)
    kept = Shape(len(layers), max(len(f) for f in ffn), wide * group, wide, shape.n_embd, shape.head_dim)
    return PrunePlan(layers=tuple(layers), ffn=tuple(ffn), kv_groups=tuple(kv), source=shape, kept=kept)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp = p_logits - np.logaddexp.reduce(p_logits, axis=1, keepdims=True)
    lq = q_logits - np.logaddexp.reduce(q_logits, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=per_layer_plans(TINY_SHAPE))
def test_per_layer_widths_run_in_llama_cpp_as_deci_and_equal_masking(tiny_gguf: Path, plan: PrunePlan) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = write_pruned(open_reader(tiny_gguf), plan, Path(tmp) / "pruned.gguf")
        reader = open_reader(out)
        arch = field_value(reader, "general.architecture")
        assert arch == ("deci" if plan.per_layer else "llama")
        _r, _m, fwd = open_forward(out)
        for j in range(len(plan.layers)):  # metadata and tensors agree, block by block
            assert fwd.hp.heads_kv(j) == len(plan.kv_groups[j])
            assert fwd.w[f"blk.{j}.ffn_down.weight"].shape == (TINY_SHAPE.n_embd, len(plan.ffn[j]))
            assert (f"blk.{j}.attn_q.weight" in fwd.w) == bool(plan.kv_groups[j])
        with torch.no_grad():
            ours = fwd(torch.tensor(IDS)).double().numpy()
        llama = _llama_logits(out, IDS)  # llama.cpp loads and runs it
    assert llama.shape == (len(IDS), 512) and np.isfinite(llama).all()
    assert _kl(llama, ours) < 1e-4  # llama.cpp's deci graph computes what our forward computes
    np.testing.assert_allclose(ours, _masked_source_logits(tiny_gguf, plan, IDS), atol=1e-4, rtol=1e-4)


def _importance(shape: Shape, rng: np.random.Generator) -> Importance:
    L = shape.n_layer
    ffn_global = rng.random((L, shape.n_ff)) * np.array([4.0, 1.0, 0.25, 1.0])[:L, None]
    kv_global = np.array([[0.5, 0.4, 0.3, 0.2], [3.0, 2.9, 2.8, 2.7], [0.01, 0.02, 0.03, 0.04], [1, 1, 1, 1]])[:L]
    return Importance(ffn=rng.random((L, shape.n_ff)), heads=rng.random((L, shape.n_head)),
                      kv_groups=rng.random((L, shape.n_head_kv)), block_influence=np.array([0.5, 0.4, 0.3, 0.01])[:L],
                      n_tokens=10, ffn_global=ffn_global, kv_global=kv_global)


def test_global_threshold_spends_the_uniform_totals_where_the_importance_is() -> None:
    shape = Shape(n_layer=4, n_ff=1024, n_head=8, n_head_kv=4, n_embd=256, head_dim=32)
    imp = _importance(shape, np.random.default_rng(0))
    uniform = make_plan(imp, shape, PruneTarget.parse("layers=3,ffn=512,kv=2"))
    plan = make_plan(imp, shape, PruneTarget.parse("layers=3,ffn=512,kv=2,per_layer"))
    assert plan.layers == uniform.layers == (0, 1, 2) and plan.per_layer and not uniform.per_layer
    w = plan.ffn_widths
    assert all(x % 256 == 0 and 256 <= x <= 1024 for x in w) and sum(w) <= 3 * 512
    assert w[0] > w[1] > w[2]  # block 0's channels add the most to the stream, block 2's the least
    assert plan.kv_widths == (2, 4, 0)  # block 2's attention goes entirely; block 1 keeps all of it
    assert plan.block_weights() <= uniform.block_weights()
    for j, layer in enumerate(plan.layers):  # each block keeps its own top channels
        kept = imp.ffn_global[layer][list(plan.ffn[j])]
        gone = np.delete(imp.ffn_global[layer], list(plan.ffn[j]))
        assert gone.size == 0 or kept.min() >= gone.max()
    d = plan.to_dict()
    assert d["per_layer"] and d["ffn_widths"] == list(w) and d["kv_groups_per_layer"] == list(plan.kv_widths)


def test_first_block_keeps_a_kv_group_even_when_it_scores_lowest() -> None:
    scores = np.array([[0.0, 0.0], [5.0, 6.0], [7.0, 8.0]])
    widths = threshold_widths(scores, total=4, align=1, floor=np.array([1, 0, 0]))
    assert widths.tolist() == [1, 1, 2]


def test_an_untouched_block_keeps_its_whole_unaligned_width() -> None:
    scores = np.ones((2, 172))  # stories260K's FFN width, not a multiple of 32
    assert threshold_widths(scores, total=2 * 172, align=32, floor=np.array([32, 32])).tolist() == [172, 172]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), total=st.integers(0, 40), align=st.sampled_from([1, 4]))
def test_threshold_widths_fit_the_total_and_rise_with_it(seed: int, total: int, align: int) -> None:
    scores = np.random.default_rng(seed).random((3, 12))
    floor = np.array([align, 0, 0])
    w = threshold_widths(scores, total, align, floor)
    assert (w % align == 0).all() and (w >= floor).all() and (w <= 12).all()
    assert w.sum() <= max(total, floor.sum())
    assert (threshold_widths(scores, total + align, align, floor) >= w).all()


def test_prune_per_layer_on_stories260k_then_prune_again_is_refused(stories_gguf: Path, tmp_path: Path) -> None:
    report = prune(stories_gguf, tmp_path / "p.gguf", PruneTarget.parse("layers=4,ffn=96,kv=2,per_layer"),
                   calib_text=STORIES_TEXT * 4, seq_len=32, seqs=2)
    plan = report.plan
    assert sum(plan.get("ffn_widths", [96] * 4)) <= 4 * 96
    _r, meta, fwd = open_forward(tmp_path / "p.gguf")
    assert meta["general.architecture"] == ("deci" if plan.get("per_layer") else "llama")
    assert plan.get("per_layer"), plan  # stories260K's blocks do not score alike
    with torch.no_grad():
        ours = fwd(torch.tensor(IDS)).double().numpy()
    assert _kl(_llama_logits(tmp_path / "p.gguf", IDS), ours) < 1e-4
    with pytest.raises(UnsupportedArchitectureError):
        model_shape(fwd)
    with pytest.raises(UnsupportedArchitectureError):
        prune(tmp_path / "p.gguf", tmp_path / "q.gguf", PruneTarget.parse("keep=0.9"), calib_text=STORIES_TEXT * 4,
              seq_len=32, seqs=2)


def test_per_layer_needs_a_llama_family_source(tiny_gguf: Path, tmp_path: Path) -> None:
    from edgegen.prune.apply import check_per_layer_source

    check_per_layer_source("llama")
    with pytest.raises(PruneTargetError, match="deci"):
        check_per_layer_source("qwen2")
    assert PruneTarget.parse("keep=0.7,per_layer") == PruneTarget(keep=0.7, per_layer=True)
    assert PruneTarget.parse("0.7, per-layer").per_layer


def test_compress_of_a_per_layer_prune_distils_and_quantizes(stories_gguf: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(STORIES_TEXT * 40)
    out = tmp_path / "small.gguf"
    p = subprocess.run([sys.executable, "-m", "edgegen", "compress", str(stories_gguf), "-o", str(out),
                        "--prune", "layers=4,ffn=96,kv=2,per_layer", "--distill-minutes", "0.05",
                        "--calib", str(text), "--preset", "q8", "--report", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["stages"] == ["prune", "distill", "quantize"] and rep["distill"]["steps"] >= 1
    assert rep["prune"]["plan"]["per_layer"]
    with Engine(out, n_ctx=64, n_threads=1, logits_all=True) as e:
        assert e.metadata["general.architecture"] == "deci"
        llama = e.logits(IDS).astype(np.float64)
    _r, _m, fwd = open_forward(out)  # the quantized deci file runs in our forward (dequantized) too
    with torch.no_grad():
        ours = fwd(torch.tensor(IDS)).double().numpy()
    assert np.isfinite(llama).all() and _kl(llama, ours) < 1e-2  # Q8_0 activations in llama.cpp's matmuls
