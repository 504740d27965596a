"""One output style for list and show commands: a Rich table for people, ``--json`` for machines.

    JsonOpt                       the ``--json`` flag every list/show command takes
    emit(data, as_json, render)   JSON on stdout, or ``render(data)`` (a Rich renderable) on the console
    table(rows, columns, title)   a table of dicts; ``columns`` maps a header to a key or a function
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.table import Table

from edgegen.cli._common import console

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")]

Column = str | Callable[[Mapping[str, Any]], Any]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ",".join(map(fmt, value)) or "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, Column], title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for header in columns:
        t.add_column(header, overflow="fold")
    for row in rows:
        t.add_row(*(fmt(c(row) if callable(c) else row.get(c)) for c in columns.values()))
    return t


def fields(data: Mapping[str, Any], keys: Mapping[str, Column], title: str | None = None) -> Table:
    """A two-column table of one object's fields."""
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for label, c in keys.items():
        t.add_row(label, fmt(c(data) if callable(c) else data.get(c)))
    return t


def emit(data: Any, as_json: bool, render: Callable[[Any], RenderableType | Sequence[RenderableType]]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    out = render(data)
    # in a pipe or a log, Rich would wrap tables at 80 columns: give them room instead
    target = console if console.is_terminal else Console(file=sys.stdout, width=200)
    for part in (out if isinstance(out, list | tuple) else [out]):
        target.print(part, highlight=False, soft_wrap=isinstance(part, str))
