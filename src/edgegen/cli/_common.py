"""Shared bits of the CLI: consoles, progress bars, settings access."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, *, bytes_: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar; yields ``update(done, total)`` for library callbacks."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if bytes_ else [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update
