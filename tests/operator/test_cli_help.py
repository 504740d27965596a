"""Every ``edgegen fleet ...`` and ``edgegen agent ...`` command: --help names its required flags and
every default, and each list/show command offers ``--json``."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import edgegen.cli as cli


def commands(group: Any, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) of every leaf command (Typer vendors its own click: duck-typed)."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            out += commands(cmd, (*prefix, name))
        else:
            out.append(((*prefix, name), cmd))
    return out


ROOT: Any = typer.main.get_command(cli.app)
ALL = commands(ROOT.commands["fleet"], ("fleet",)) + commands(ROOT.commands["agent"], ("agent",))


def options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if getattr(p, "param_type_name", "") == "option"]
LIST_AND_SHOW = {("fleet", "devices"), ("fleet", "device"), ("fleet", "events"), ("fleet", "models"),
                 ("fleet", "status"), ("fleet", "keys", "show"), ("fleet", "rollouts", "list"),
                 ("fleet", "rollouts", "show"), ("fleet", "telemetry", "streams"), ("agent", "status")}


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_names_required_flags_and_defaults(path: tuple[str, ...], cmd: Any) -> None:
    result = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for opt in options(cmd):
        if opt.name == "help":
            continue
        flag = max(opt.opts, key=len)
        assert flag in text, (path, flag)
        if opt.required:
            assert "[required]" in text, (path, flag)
            continue
        if opt.is_flag or opt.multiple or opt.name == "as_json":
            continue
        has_default = opt.default is not None and opt.default != ""
        helptext = (opt.help or "").lower()
        assert has_default or "default" in helptext or "required" in helptext, (
            f"{' '.join(path)} {flag}: no default shown and none explained in its help")


@pytest.mark.parametrize("path", sorted(LIST_AND_SHOW), ids=[" ".join(p) for p in sorted(LIST_AND_SHOW)])
def test_list_and_show_commands_offer_json(path: tuple[str, ...]) -> None:
    cmd = dict(ALL)[path]
    assert any("--json" in p.opts for p in options(cmd)), path


def test_agent_run_says_what_the_first_run_needs() -> None:
    text = " ".join(CliRunner().invoke(cli.app, ["agent", "run", "--help"], env={"COLUMNS": "400"}).output.split())
    assert "--server" in text and "required on the first run" in text and "--data-dir" in text
