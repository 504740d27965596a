"""The speed profile: the ns-per-weight fit (pure), where profiles are kept, and `edgegen profile-cpu`
end to end on a tiny model, picked up by `edgegen compress --speed-of` afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegen.compress import format_profile as fp
from edgegen.compress.speed import CpuKind
from edgegen.errors import UserInputError


def _additive_times(true: dict, layouts: dict, overhead: dict) -> dict:
    """Times (ms per token) of files under the additive model: weights in each format x its cost + overhead."""
    return {f: {ph: (sum(getattr(w, ph) * true[q][ph] for q, w in lay.items()) + overhead[ph]) * 1e-6
                for ph in ("decode", "prefill")} for f, lay in layouts.items()}


def test_fit_recovers_the_costs_of_an_additive_model() -> None:
    """Files timed as (weights in each format x that format's cost) + a fixed per-token overhead: the
    fit gives each format's true cost plus the same overhead share, whether the format fills the model
    (Q8_0) or only part of it (Q4_K, 300 of the 1000 decode weights, the rest in Q4_0)."""
    true = {"Q4_0": {"decode": 0.03, "prefill": 0.05}, "Q8_0": {"decode": 0.05, "prefill": 0.07},
            "Q4_K": {"decode": 0.02, "prefill": 0.04}}
    W = fp.WeightsRead
    layouts = {"Q4_0": {"Q4_0": W(1000, 900)}, "Q8_0": {"Q8_0": W(1000, 900)},
               "Q4_K": {"Q4_K": W(300, 300), "Q4_0": W(700, 600)}}
    overhead = {"decode": 7.0, "prefill": 4.5}  # ns per token outside the matrices
    fitted = fp.fit_costs(_additive_times(true, layouts, overhead), layouts)
    for q in true:
        assert fitted[q][fp.DECODE_KEY] == pytest.approx(true[q]["decode"] + overhead["decode"] / 1000)
        assert fitted[q][fp.PREFILL_KEY] == pytest.approx(true[q]["prefill"] + overhead["prefill"] / 900)


def test_fit_separates_a_fallback_that_the_base_file_holds_too() -> None:
    """The field fault: on a model whose FFN rows fit no Q4_0 block (stories260K's 172), every file holds
    those rows in F16; taking the Q4_0 file's time over all weights as Q4_0's cost put F16's share into
    it (fitted 0.0385 for a true 0.03). With the F16 file timed, the linear fit is exact again."""
    true = {"Q4_0": {"decode": 0.03, "prefill": 0.05}, "Q8_0": {"decode": 0.05, "prefill": 0.06},
            "F16": {"decode": 0.07, "prefill": 0.08}}
    W = fp.WeightsRead
    ffn = W(204_288, 204_288)
    rest = W(55_040, 22_272)
    layouts = {"Q4_0": {"Q4_0": rest, "F16": ffn}, "Q8_0": {"Q8_0": rest, "F16": ffn},
               "F16": {"F16": W(rest.decode + ffn.decode, rest.prefill + ffn.prefill)}}
    fitted = fp.fit_costs(_additive_times(true, layouts, {"decode": 0.0, "prefill": 0.0}), layouts)
    for q in true:
        assert fitted[q][fp.DECODE_KEY] == pytest.approx(true[q]["decode"])
        assert fitted[q][fp.PREFILL_KEY] == pytest.approx(true[q]["prefill"])
    without_f16 = {k: v for k, v in layouts.items() if k != "F16"}
    with pytest.raises(ValueError, match="cannot separate"):
        fp.fit_costs(_additive_times(true, without_f16, {"decode": 0.0, "prefill": 0.0}), without_f16)


def test_fit_gives_no_figure_for_a_phase_the_format_holds_nothing_of() -> None:
    W = fp.WeightsRead
    layouts = {"Q4_0": {"Q4_0": W(100, 80)}, "Q6_K": {"Q6_K": W(20, 0), "Q4_0": W(80, 80)}}
    times = {"Q4_0": {"decode": 1.0, "prefill": 1.0}, "Q6_K": {"decode": 2.0, "prefill": 1.0}}
    fitted = fp.fit_costs(times, layouts)
    assert fp.PREFILL_KEY not in fitted["Q6_K"] and fitted["Q6_K"][fp.DECODE_KEY] > fitted["Q4_0"][fp.DECODE_KEY]


def test_same_round_ratios_cancel_a_slow_stretch_of_the_machine() -> None:
    """Round-wide slowdowns (x1 to x1.9, as a neighbour's job comes and goes) scale every file of the round
    alike: the time fitted for Q8_0 is exactly its true 1.25x of Q4_0 times Q4_0's median, where the
    median of Q8_0's own times is off (its slow rounds are not Q4_0's median rounds)."""
    slow = [1.0, 1.9, 1.1, 1.6, 1.0]
    base = [8.0 * k for k in slow]
    q8 = [10.0 * k for k in slow]
    q8[2], q8[4] = 10.0 * 1.8, 10.0 * 1.8  # two rounds where only Q8_0's turn was slowed
    series = {"Q4_0": {"decode": base}, "Q8_0": {"decode": q8}}
    fitted = fp.same_round_times(series)
    assert fitted["Q4_0"]["decode"] == pytest.approx(8.8)
    assert fitted["Q8_0"]["decode"] == pytest.approx(8.8 * 1.25)
    assert sorted(q8)[2] == pytest.approx(18.0)  # Q8_0's own median: 2.05x Q4_0's
    with pytest.raises(ValueError, match="rounds"):
        fp.same_round_times({"Q4_0": {"decode": base}, "Q8_0": {"decode": q8[:3]}})
    with pytest.raises(ValueError, match="base format"):
        fp.same_round_times({"Q8_0": {"decode": q8}})


def test_formats_are_trimmed_deduplicated_and_checked() -> None:
    assert fp.parse_formats(" q8_0, Q8_0,,Q4_0 ") == ["Q8_0", "Q4_0"]
    with pytest.raises(UserInputError, match="unknown block format 'Q9_9'"):
        fp.parse_formats("Q4_0,Q9_9")
    with pytest.raises(UserInputError, match="no block format"):
        fp.parse_formats(" , ")


def test_saved_only_when_full() -> None:
    full = {"rounds": 5, "complete": True, "weights_read_per_token": 134_000_000, "not_positive": []}
    assert fp.saveable(full) is None
    assert "partial" in fp.saveable({**full, "rounds": 2})
    assert "partial" in fp.saveable({**full, "complete": False})
    assert "in cache" in fp.saveable({**full, "weights_read_per_token": 300_000})
    assert "Q5_K" in fp.saveable({**full, "not_positive": ["Q5_K"]})


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


def test_profile_cpu_end_to_end_writes_a_partial_profile_but_does_not_save_it(tiny_gguf: Path, tmp_path: Path):
    """A real (short) measurement on the tiny Llama: Q4_K fits none of its 64- and 128-wide rows and is
    skipped; --out gets the profile, with positive costs from the rounds' medians; the data dir does not,
    as 1 round on a model that fits in cache is no profile for this CPU, and no format file is left."""
    from edgegen.compress.speed import host_cpu_kind

    home = tmp_path / "home"
    p = _edgegen("profile-cpu", str(tiny_gguf), "--rounds", "1", "--prompt", "16", "--tokens", "4",
                 "--formats", "Q4_0,Q8_0,F16,Q4_K", "--out", str(tmp_path / "p.json"), home=home)
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["skipped"] == ["Q4_K"] and set(data["formats"]) == {"Q4_0", "Q8_0", "F16"}
    for row in data["formats"].values():
        assert row[fp.DECODE_KEY] > 0 and row[fp.PREFILL_KEY] > 0 and row["decode_cpu_ms_per_token"]["n"] == 1
    assert data["cpu"] == host_cpu_kind().to_dict() and not data["complete"]
    assert "not saved as this CPU's profile: it is partial" in p.stderr
    assert fp.cached(home, host_cpu_kind()) is None
    assert [f for f in (home / "speed-profiles").rglob("*") if f.is_file()] == []


def test_compress_plans_with_the_saved_profile(tiny_gguf: Path, tmp_path: Path) -> None:
    """`compress --speed-of` without --speed-profile finds this CPU's saved profile, names it on stderr and
    in its report, and plans with its costs."""
    from edgegen.compress.speed import decode_cost, host_cpu_kind, load_profile

    home = tmp_path / "home"
    saved = fp.save({"formats": {"Q4_0": {fp.DECODE_KEY: 0.03, fp.PREFILL_KEY: 0.02},
                                 "Q8_0": {fp.DECODE_KEY: 0.09, fp.PREFILL_KEY: 0.05}}}, home, host_cpu_kind())
    report = tmp_path / "r.json"
    c = _edgegen("compress", str(tiny_gguf), "-o", str(tmp_path / "o.gguf"), "--no-calib", "--max-size-mib", "5",
                 "--speed-of", str(tiny_gguf), "--report", str(report), home=home)
    assert c.returncode == 0, c.stderr
    assert f"speed profile: {saved}" in c.stderr.replace("\n", "")
    r = json.loads(report.read_text())
    assert r["speed_profile"] == str(saved) and r["speed_profile_warning"] is None
    shapes = [(t["name"], tuple(t["shape"]), t["type"]) for t in r["tensors"]]
    assert r["predicted_decode_ms"] == pytest.approx(decode_cost(shapes, load_profile(saved)))
    assert r["predicted_decode_ms"] != pytest.approx(decode_cost(shapes))  # not the built-in constants


@pytest.mark.parametrize("cpu", [{"model": "x", "isa": 5}, {"model": "x", "isa": "avx2"}])
def test_compress_refuses_a_corrupt_saved_profile_in_one_line(cpu: dict, tiny_gguf: Path, tmp_path: Path):
    from edgegen.compress.speed import host_cpu_kind

    home = tmp_path / "home"
    saved = fp.save({"formats": {"Q4_0": {fp.DECODE_KEY: 0.03}}}, home, host_cpu_kind())
    saved.write_text(json.dumps({"formats": {"Q4_0": {fp.DECODE_KEY: 0.03}}, "cpu": cpu}))
    c = _edgegen("compress", str(tiny_gguf), "-o", str(tmp_path / "o.gguf"), "--no-calib", "--max-size-mib", "5",
                 "--speed-of", str(tiny_gguf), home=home)
    lines = [ln for ln in c.stderr.splitlines() if ln.strip() and not ln.startswith("speed profile:")]
    assert c.returncode == 2 and len(lines) == 1 and "cpu.isa must be a list" in lines[0], c.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_profile_cpu_bad_input_is_one_line_and_leaves_nothing(tiny_gguf: Path, tmp_path: Path) -> None:
    p = _edgegen("profile-cpu", str(tiny_gguf), "--formats", "Q4_0,Q9_9", home=tmp_path / "h1")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "unknown block format 'Q9_9'" in p.stderr
    import gguf

    narrow = tmp_path / "narrow.gguf"  # rows of 48: no Q4_0 block fits
    w = gguf.GGUFWriter(str(narrow), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((48, 48), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = _edgegen("profile-cpu", str(narrow), "--rounds", "1", home=tmp_path / "h2")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no row length is a multiple of 32" in p.stderr
    assert not any(f.is_file() for f in (tmp_path / "h2").rglob("*"))
