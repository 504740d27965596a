"""The core CLI as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGEGEN = [sys.executable, "-m", "edgegen"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEGEN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def assert_clean_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_run_streams_the_known_story(stories_gguf: Path) -> None:
    p = run("run", str(stories_gguf), "Once upon a time", "-n", "40", "--greedy")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Once upon a time, there was a little girl named Lily.")


def test_info_json(stories_gguf: Path) -> None:
    p = run("info", str(stories_gguf), "--json")
    info = json.loads(p.stdout)
    assert info["architecture"] == "llama" and info["n_params"] > 250_000 and info["types"]


def test_missing_model(tmp_path: Path) -> None:
    assert_clean_error(run("run", str(tmp_path / "nope.gguf"), "hi"), "model not found")


def test_non_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "x.gguf"
    f.write_text("hello")
    assert_clean_error(run("run", str(f), "hi"), "not a GGUF file")


def test_truncated_gguf(stories_gguf: Path, tmp_path: Path) -> None:
    f = tmp_path / "cut.gguf"
    f.write_bytes(stories_gguf.read_bytes()[: stories_gguf.stat().st_size // 2])
    assert_clean_error(run("bench", str(f)), "truncated")


def test_unwritable_output(stories_gguf: Path, tmp_path: Path, shakespeare: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = run("eval", str(stories_gguf), "--ref", str(stories_gguf), "--text", str(shakespeare / "hamlet_gut.txt"),
            "--chunk", "64", "--chunks", "1", "-o", str(blocker / "out.json"))
    assert_clean_error(p, "cannot write")


def test_missing_text(stories_gguf: Path, tmp_path: Path) -> None:
    p = run("eval", str(stories_gguf), "--ref", str(stories_gguf), "--text", str(tmp_path / "none.txt"))
    assert_clean_error(p, "text file not found")


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(args: list[str]) -> None:
    assert run(*args).returncode == 0


def test_compress_warns_when_the_speed_profile_was_measured_on_other_kernels(stories_gguf: Path, tmp_path: Path):
    """``--speed-of`` with a profile from a CPU whose kernel flags differ from this one's: one warning line
    on stderr, the same sentence in the report, and the compression still runs."""
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"cpu": {"model": "a CPU with no SIMD", "isa": []},
                                   "formats": {"Q4_0": {"ns_per_weight_1thread": 0.03}}}))
    out, report = tmp_path / "out.gguf", tmp_path / "report.json"
    p = run("compress", str(stories_gguf), "-o", str(out), "--no-calib", "--max-size-mib", "5",
            "--speed-of", str(stories_gguf), "--speed-profile", str(profile), "--report", str(report))
    assert p.returncode == 0, p.stderr
    warned = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "a CPU with no SIMD" in warned[0], p.stderr
    assert "a CPU with no SIMD" in json.loads(report.read_text())["speed_profile_warning"]
