"""Bad input to ``convert_model`` and ``edgegen convert``: the right error, one line, nothing left at ``out``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgegen.cli import main
from edgegen.errors import (
    InvalidModelError,
    ModelNotFoundError,
    OutputError,
    UnsupportedArchitectureError,
    UserInputError,
)
from edgegen.formats.convert import convert_model
from edgegen.runtime.engine import Engine, SamplingParams
from tests.conftest import STORIES_DIR, STORIES_TEXT


def _stories_copy(tmp_path: Path, edit: Callable[[Path], None] | None = None) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(STORIES_DIR, folder)
    if edit:
        edit(folder)
    return folder


def _edit_json(name: str, **changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        data.update(changes)
        (folder / name).write_text(json.dumps(data))

    return edit


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])

    return edit


def _bad_sources(tmp_path: Path, stories_gguf: Path) -> dict[str, tuple[Path, type[Exception]]]:
    (tmp_path / "empty").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "half.gguf").write_bytes(stories_gguf.read_bytes()[: stories_gguf.stat().st_size // 2])
    cases = {
        "missing path": (tmp_path / "nope", ModelNotFoundError),
        "folder without config.json": (tmp_path / "empty", InvalidModelError),
        "non-GGUF file": (tmp_path / "notes.txt", InvalidModelError),
        "truncated GGUF": (tmp_path / "half.gguf", InvalidModelError),
    }
    edits = {
        "gpt2 architecture": (_edit_json("config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"]),
                              UnsupportedArchitectureError),
        "gelu activation": (_edit_json("config.json", hidden_act="gelu"), UnsupportedArchitectureError),
        "truncated safetensors": (_truncate("model.safetensors", 0.5), InvalidModelError),
        "missing tensor": (_drop_tensor("model.layers.3.mlp.up_proj.weight"), InvalidModelError),
        "shape disagrees with config": (_edit_json("config.json", intermediate_size=256), InvalidModelError),
        "no tokenizer": (_remove("tokenizer.json", "tokenizer.model"), InvalidModelError),
        "corrupt tokenizer.model": (_corrupt_spm, InvalidModelError),
    }
    for i, (name, (edit, exc)) in enumerate(edits.items()):
        cases[name] = (_stories_copy(tmp_path / f"case{i}", edit), exc)
    return cases


def _drop_tensor(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        weights = load_file(str(folder / "model.safetensors"))
        del weights[name]
        save_file(weights, str(folder / "model.safetensors"))

    return edit


def _remove(*names: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        for n in names:
            (folder / n).unlink()

    return edit


def _corrupt_spm(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\xff\xff\xff\xff not protobuf")


@pytest.fixture()
def bad_sources(tmp_path: Path, stories_gguf: Path) -> dict[str, tuple[Path, type[Exception]]]:
    return _bad_sources(tmp_path / "src", stories_gguf)


def test_bad_sources_raise_the_right_error_and_leave_nothing(bad_sources, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for case, (src, exc_type) in bad_sources.items():
        out = out_dir / "x.gguf"
        with pytest.raises(exc_type) as info:
            convert_model(src, out, dtype="f32")
        message = str(info.value)
        assert message and "\n" not in message, case
        assert list(out_dir.iterdir()) == [], f"{case} left {list(out_dir.iterdir())}"


def test_unwritable_outputs(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    cases = [tmp_path / "a_dir", tmp_path / "a_file" / "x.gguf"]
    if Path("/proc").is_dir():
        cases.append(Path("/proc/edgegen-convert-test.gguf"))  # not writable even by root
    for out in cases:
        with pytest.raises(OutputError):
            convert_model(STORIES_DIR, out, dtype="f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]
    assert list((tmp_path / "a_dir").iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError):
            convert_model(STORIES_DIR, ro / "x.gguf", dtype="f32")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_missing_output_folders_are_created(tmp_path: Path) -> None:
    out = convert_model(STORIES_DIR, tmp_path / "a" / "b" / "s.gguf", dtype="f32")
    assert out.exists()


def test_output_may_not_be_the_source(stories_gguf: Path, tmp_path: Path) -> None:
    src = tmp_path / "s.gguf"
    shutil.copy(stories_gguf, src)
    with pytest.raises(OutputError):
        convert_model(src, src, dtype="f32")
    assert src.read_bytes() == stories_gguf.read_bytes()


def test_bad_dtype(tmp_path: Path) -> None:
    with pytest.raises(UserInputError):
        convert_model(STORIES_DIR, tmp_path / "x.gguf", dtype="q4")
    assert not (tmp_path / "x.gguf").exists()


# ---- the CLI -----------------------------------------------------------------------------------


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_cli_convert_then_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.gguf"
    code, stdout, _ = _cli(["convert", str(STORIES_DIR), "-o", str(out), "--dtype", "f32"], capsys)
    assert code == 0 and "wrote" in stdout
    with Engine(out, n_ctx=512, n_threads=1) as engine:
        text = "Once upon a time" + engine.complete("Once upon a time", SamplingParams.greedy(60)).text
    assert text.startswith(STORIES_TEXT)


def test_cli_bad_input_exits_2_with_one_line(bad_sources, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-out" / "x.gguf"
    for case, (src, _) in bad_sources.items():
        code, _, err = _cli(["convert", str(src), "-o", str(out)], capsys)
        lines = [line for line in err.splitlines() if line.strip() and "converting" not in line]
        assert code == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("error:"), (case, err)
        assert "Traceback" not in err
        assert not out.parent.exists()  # not even the output folder is created for a bad source
    for args in (["--dtype", "q4"], ["-o", str(tmp_path)]):
        code, _, err = _cli(["convert", str(STORIES_DIR), "-o", str(out), *args], capsys)
        assert code == 2 and "Traceback" not in err, err


def test_installed_entry_point_exits_2(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("edgegen")
    if not exe.exists():
        pytest.skip("the edgegen console script is not installed in this environment")
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([str(exe), "convert", str(tmp_path / "empty"), "-o", str(tmp_path / "x.gguf")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.gguf").exists()
