"""CLI for Fleet II, added under ``edgegen fleet``: staged rollouts and telemetry.

    edgegen fleet rollout MODEL VERSION --to GROUP --stages 10,50,100 [--gate METRIC<VALUE@N]...
    edgegen fleet rollouts list|show ID|pause ID|resume ID|abort ID|tick|stage MODEL|unstage MODEL
    edgegen fleet telemetry streams|metrics

``rollout`` signs a rollback version (the group's current bytes as a newer version number) with the
``targets`` key of the keyring before it starts, so a breached gate can send touched devices back
without anyone at the keyboard; ``--no-rollback`` skips that (touched devices then stay put).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgegen.cli._common import console
from edgegen.errors import UserInputError

rollouts_app = typer.Typer(help="Staged rollouts: list, show, pause, resume, abort.", no_args_is_help=True)
telemetry_app = typer.Typer(help="Device telemetry held by the control plane.", no_args_is_help=True)

ServerOpt = Annotated[str | None, typer.Option("--server", help="control plane URL")]
TokenOpt = Annotated[str | None, typer.Option("--admin-token", help="admin API token")]


def _client(server: str | None, token: str | None):  # -> RolloutClient
    from edgegen.cli import fleet as fleet_cli
    from edgegen.fleet.rollout_client import RolloutClient

    token = token or fleet_cli._fleet("admin_token")
    if token is None:
        path = fleet_cli._data_dir() / "admin_token"
        if not path.exists():
            raise UserInputError("no admin token: pass --admin-token or set EDGEGEN_FLEET__ADMIN_TOKEN")
        token = path.read_text().strip()
    return RolloutClient(server or fleet_cli._fleet("server_url", "http://127.0.0.1:8700"), token)


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def rollout_cmd(
    model: Annotated[str, typer.Argument(help="model name devices follow")],
    version: Annotated[int, typer.Argument(help="the published version to roll out")],
    to: Annotated[str, typer.Option("--to", help="group name, KEY=VALUE label, or 'all'")] = "all",
    stages: Annotated[str, typer.Option("--stages", help="cumulative percentages")] = "10,50,100",
    gate: Annotated[list[str] | None, typer.Option(
        "--gate", help="METRIC<VALUE[@MIN_DEVICES], repeatable; metrics: update_failure_rate, error_rate, "
                       "p95_latency_ms, p95_latency_ratio, logprob_drop, drift_rate")] = None,
    bake: Annotated[float, typer.Option("--bake", help="seconds each stage must run before advancing")] = 0.0,
    settle: Annotated[float, typer.Option("--settle", help="share of a stage that must have installed")] = 1.0,
    rollback: Annotated[bool, typer.Option("--rollback/--no-rollback",
                                           help="sign a rollback version first (needs the keyring)")] = True,
    keys: Annotated[Path | None, typer.Option("--keys", help="keyring directory")] = None,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Roll VERSION of MODEL out to a group in stages, advancing only while the health gates hold."""
    from edgegen.cli import fleet as fleet_cli

    key = None
    if rollback:
        from edgegen.fleet.keys import Keyring

        key = Keyring.open(fleet_cli._keys_dir(keys)).targets_key
    with _client(server, admin_token) as client:
        _print(client.start(model, version, to, stages=stages, gates=gate, key=key, bake_s=bake,
                            settle_fraction=settle))


@rollouts_app.command("list")
def list_cmd(model: Annotated[str | None, typer.Option("--model")] = None, server: ServerOpt = None,
             admin_token: TokenOpt = None) -> None:
    """Every rollout, newest first."""
    with _client(server, admin_token) as client:
        for r in client.list(model):
            console.print(f"#{r['id']} {r['model']} v{r['version']} [{r['state']}] stage {r['percent']}% "
                          f"of {r['stages']} ({len(r['members'])}/{len(r['devices'])} devices) {r['reason']}",
                          highlight=False, soft_wrap=True, markup=False)


@rollouts_app.command("show")
def show_cmd(rollout_id: int, server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """One rollout: members, their versions, gate readings of each decision."""
    with _client(server, admin_token) as client:
        _print(client.show(rollout_id))


@rollouts_app.command("pause")
def pause_cmd(rollout_id: int, reason: Annotated[str, typer.Option("--reason")] = "",
              server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Stop opening stages; devices keep what they run."""
    with _client(server, admin_token) as client:
        _print(client.pause(rollout_id, reason))


@rollouts_app.command("resume")
def resume_cmd(rollout_id: int, server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Continue a paused rollout (its current stage is measured afresh)."""
    with _client(server, admin_token) as client:
        _print(client.resume(rollout_id))


@rollouts_app.command("abort")
def abort_cmd(rollout_id: int, reason: Annotated[str, typer.Option("--reason")] = "",
              server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """End the rollout; devices that installed the version go to the rollback version."""
    with _client(server, admin_token) as client:
        _print(client.abort(rollout_id, reason))


@rollouts_app.command("tick")
def tick_cmd(server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Evaluate running rollouts now (the control plane also does it on its own schedule)."""
    with _client(server, admin_token) as client:
        _print(client.tick())


@rollouts_app.command("stage")
def stage_cmd(model: str, server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """From now on, new versions of MODEL reach devices only through rollouts."""
    with _client(server, admin_token) as client:
        _print(client.policy(model, staged=True))


@rollouts_app.command("unstage")
def unstage_cmd(model: str, server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Devices outside rollouts follow MODEL's newest published version again."""
    with _client(server, admin_token) as client:
        _print(client.policy(model, staged=False))


@telemetry_app.command("streams")
def streams_cmd(server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Per device: events stored, duplicates ignored, events dropped by the device spool."""
    with _client(server, admin_token) as client:
        _print(client.telemetry_streams())


@telemetry_app.command("metrics")
def metrics_cmd(server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """The Prometheus exposition the control plane serves at /metrics."""
    with _client(server, admin_token) as client:
        sys.stdout.write(client.metrics())


def register(app: typer.Typer) -> None:
    """Adds ``rollout``, ``rollouts`` and ``telemetry`` under ``edgegen fleet``."""
    from edgegen.cli.fleet import fleet_app

    if getattr(fleet_app, "_fleet_ii", False):  # idempotent: cli/__init__ and tests may both call it
        return
    fleet_app._fleet_ii = True  # type: ignore[attr-defined]
    fleet_app.command("rollout")(rollout_cmd)
    fleet_app.add_typer(rollouts_app, name="rollouts")
    fleet_app.add_typer(telemetry_app, name="telemetry")
