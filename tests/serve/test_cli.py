"""``edgegen serve`` refuses bad flags with one line and exit code 2 (the happy path runs in test_load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.cli import main


@pytest.mark.parametrize(("extra", "message"), [
    (["--upstream", "ftp://cloud"], "--upstream must be an http(s) URL"),
    (["--max-queue", "-1"], "--max-queue must be 0 or more"),
    (["--ctx", "4"], "--ctx must be at least 16"),
])
def test_bad_flags_exit_2(stories_gguf: Path, extra: list[str], message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(stories_gguf), "--port", "0", *extra])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path / "absent.gguf"), "--port", "0"])
    assert exit_.value.code == 2 and "not found" in capsys.readouterr().err
