"""The speed profile: the ns-per-weight fit (pure), where profiles are kept, and `edgegen profile-cpu`
end to end on a tiny model, picked up by `edgegen compress --speed-of` afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgegen.compress import format_profile as fp
from edgegen.compress.speed import CpuKind


def test_fit_recovers_the_costs_of_an_additive_model() -> None:
    """Files timed as (weights in each format x that format's cost) + a fixed per-token overhead: the
    fit gives each format's true cost plus the same overhead share, whether the format fills the model
    (Q8_0) or only part of it (Q4_K, in 300 of 1000 decode weights, the rest in Q4_0)."""
    true = {"Q4_0": {"decode": 0.03, "prefill": 0.05}, "Q8_0": {"decode": 0.05, "prefill": 0.07},
            "Q4_K": {"decode": 0.02, "prefill": 0.04}}
    total = fp.WeightsRead(decode=1000, prefill=900)
    held = {"Q4_0": total, "Q8_0": total, "Q4_K": fp.WeightsRead(decode=300, prefill=300)}
    overhead = {"decode": 7.0, "prefill": 4.5}  # ns per token outside the matrices

    def ms(q: str, phase: str) -> float:
        n_all, n_q = getattr(total, phase), getattr(held[q], phase)
        ns = n_q * true[q][phase] + (n_all - n_q) * true["Q4_0"][phase] + overhead[phase]
        return ns * 1e-6

    times = {q: {"decode": ms(q, "decode"), "prefill": ms(q, "prefill")} for q in true}
    fitted = fp.fit_costs(times, total, held)
    for q in true:
        assert fitted[q][fp.DECODE_KEY] == pytest.approx(true[q]["decode"] + overhead["decode"] / 1000)
        assert fitted[q][fp.PREFILL_KEY] == pytest.approx(true[q]["prefill"] + overhead["prefill"] / 900)


def test_fit_needs_the_base_and_skips_a_phase_the_format_holds_nothing_of() -> None:
    total = fp.WeightsRead(decode=100, prefill=80)
    with pytest.raises(ValueError, match="base format"):
        fp.fit_costs({"Q8_0": {"decode": 1.0, "prefill": 1.0}}, total, {"Q8_0": total})
    times = {"Q4_0": {"decode": 1.0, "prefill": 1.0}, "Q6_K": {"decode": 2.0, "prefill": 1.0}}
    fitted = fp.fit_costs(times, total, {"Q4_0": total, "Q6_K": fp.WeightsRead(decode=20, prefill=0)})
    assert fp.PREFILL_KEY not in fitted["Q6_K"] and fitted["Q6_K"][fp.DECODE_KEY] > fitted["Q4_0"][fp.DECODE_KEY]


def test_picks_fall_back_to_the_base_then_f16() -> None:
    shapes = {"blk.0.ffn_down.weight": (64, 512), "blk.0.attn_q.weight": (64, 64), "odd.weight": (8, 48)}
    picks = fp.picks_for(shapes, list(shapes), "Q4_K")
    assert picks == {"blk.0.ffn_down.weight": "Q4_K", "blk.0.attn_q.weight": "Q4_0", "odd.weight": "F16"}


def test_weights_read_counts_the_tied_embedding_in_decode_only() -> None:
    shapes = {"token_embd.weight": (512, 64), "blk.0.attn_q.weight": (64, 64)}
    w = fp.WeightsRead.of(shapes, list(shapes))
    assert (w.decode, w.prefill) == (512 * 64 + 64 * 64, 64 * 64)


def test_profiles_are_kept_per_cpu_kind(tmp_path: Path) -> None:
    avx2 = CpuKind("AMD EPYC", ("avx", "avx2"))
    avx512 = CpuKind("AMD EPYC", ("avx", "avx2", "avx512f"))
    assert fp.profile_path(tmp_path, avx2) != fp.profile_path(tmp_path, avx512)
    assert fp.cached(tmp_path, avx2) is None and fp.cached(tmp_path, None) is None
    saved = fp.save({"formats": {"Q4_0": {fp.DECODE_KEY: 0.03}}}, tmp_path, avx2)
    assert fp.cached(tmp_path, avx2) == saved and fp.cached(tmp_path, avx512) is None
    assert json.loads(saved.read_text())["cpu"] == avx2.to_dict()


def _edgegen(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEGEN_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edgegen", *args], capture_output=True, text=True, env=env)


def test_profile_cpu_end_to_end_then_compress_uses_it(tiny_gguf: Path, tmp_path: Path) -> None:
    """A real (short) measurement on the tiny Llama: Q4_K fits none of its 64- and 128-wide rows and is
    skipped; the profile is saved under the data dir by this CPU's kind, and a later `compress
    --speed-of` names it on stderr and in its report and plans with its costs."""
    from edgegen.compress.speed import host_cpu_kind, load_profile

    home = tmp_path / "home"
    p = _edgegen("profile-cpu", str(tiny_gguf), "--rounds", "1", "--prompt", "16", "--tokens", "4",
                 "--formats", "Q4_0,Q8_0,F16,Q4_K", "--out", str(tmp_path / "p.json"), home=home)
    assert p.returncode == 0, p.stderr
    saved = fp.cached(home, host_cpu_kind())
    assert saved is not None and f"saved {saved}" in p.stdout.replace("\n", "")
    data = json.loads(saved.read_text())
    assert data["skipped"] == ["Q4_K"] and set(data["formats"]) == {"Q4_0", "Q8_0", "F16"}
    for row in data["formats"].values():
        assert row[fp.DECODE_KEY] > 0 and row[fp.PREFILL_KEY] > 0 and row["decode_cpu_ms_per_token"]["n"] == 1
    assert json.loads((tmp_path / "p.json").read_text())["formats"] == data["formats"]

    report = tmp_path / "r.json"
    c = _edgegen("compress", str(tiny_gguf), "-o", str(tmp_path / "o.gguf"), "--no-calib", "--max-size-mib", "5",
                 "--speed-of", str(tiny_gguf), "--report", str(report), home=home)
    assert c.returncode == 0, c.stderr
    assert f"speed profile: {saved}" in c.stderr.replace("\n", "")
    r = json.loads(report.read_text())
    assert r["speed_profile"] == str(saved) and r["speed_profile_warning"] is None
    costs = load_profile(saved)
    from edgegen.compress.speed import decode_cost

    shapes = [(t["name"], tuple(t["shape"]), t["type"]) for t in r["tensors"]]
    assert r["predicted_decode_ms"] == pytest.approx(decode_cost(shapes, costs))


def test_profile_cpu_refuses_an_unknown_format(tiny_gguf: Path, tmp_path: Path) -> None:
    p = _edgegen("profile-cpu", str(tiny_gguf), "--formats", "Q4_0,Q9_9", home=tmp_path)
    assert p.returncode == 2 and "unknown block format 'Q9_9'" in p.stderr and "Traceback" not in p.stderr
