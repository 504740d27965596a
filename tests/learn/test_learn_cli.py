"""``edgegen learn``: options that cannot work are refused with one line and exit code 2, before any
process starts."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_core_cli import assert_clean_error, run


def test_robust_rule_with_secagg_is_refused(stories_gguf: Path, tmp_path: Path) -> None:
    devs = [f"--device=d{i}={tmp_path}" for i in range(3)]
    p = run("learn", "run", "--model", str(stories_gguf), *devs, "--robust", "median")
    assert_clean_error(p, "SecAgg")


def test_a_device_without_a_folder_is_refused(stories_gguf: Path) -> None:
    p = run("learn", "run", "--model", str(stories_gguf), "--device", "lonely")
    assert_clean_error(p, "NAME=TEXT_DIR")


def test_secagg_needs_three_devices(stories_gguf: Path, tmp_path: Path) -> None:
    p = run("learn", "run", "--model", str(stories_gguf), f"--device=a={tmp_path}", f"--device=b={tmp_path}")
    assert_clean_error(p, "SecAgg+ needs at least 3")
