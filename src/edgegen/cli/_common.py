"""Shared bits of the CLI: consoles, progress bars, settings access."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgegen.errors import OutputError

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, *, bytes_: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar; yields ``update(done, total)`` for library callbacks."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if bytes_ else [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    # bars are for people at a terminal; in logs and pipes they are noise
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def check_output_path(out: Path) -> None:
    """Fail before any work if ``out`` cannot be written (the library still writes atomically)."""
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a folder")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK):
        raise OutputError(f"cannot write {out}: {ancestor} is not writable")
