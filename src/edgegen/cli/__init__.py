"""The ``edgegen`` command line: Typer app assembled from one module per capability.

Each ``cli/<name>.py`` exposes ``register(app)``. Errors from the library arrive as ``EdgegenError``
and leave as one line on stderr with the error's exit code (2 for bad input); nothing else in the
package prints or exits.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from edgegen.cli import agent, compress, core, fleet, learn, plan, prune, rollout, serve
from edgegen.cli._common import err_console
from edgegen.errors import EdgegenError

app = typer.Typer(
    name="edgegen",
    help="Generative AI on edge devices: compress, run, serve, and update models across a fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _module in (core, compress, prune, serve, fleet, rollout, agent, plan, learn):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        rc = exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        rc = 130
    except click.ClickException as exc:
        exc.show()
        rc = exc.exit_code
    except EdgegenError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        rc = exc.exit_code
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)
