"""CLI for Fleet II, added under ``edgegen fleet``: staged rollouts and telemetry.

    edgegen fleet rollout MODEL VERSION --to GROUP --stages 10,50,100 [--gate METRIC<VALUE@N]...
    edgegen fleet rollouts list|show ID|pause ID|resume ID|abort ID|tick|stage MODEL|unstage MODEL
    edgegen fleet telemetry streams|metrics

``rollout`` signs a rollback version (the group's current bytes as a newer version number) with the
``targets`` key of the keyring before it starts, so a breached gate can send touched devices back
without anyone at the keyboard; ``--no-rollback`` skips that (touched devices then stay put).
List and show commands print Rich tables, or JSON with ``--json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgegen.cli._output import JsonOpt, emit, fields, table
from edgegen.errors import UserInputError
from edgegen.fleet.rollout import GATE_GRAMMAR, NoTraffic

rollouts_app = typer.Typer(help="Staged rollouts: list, show, pause, resume, abort.", no_args_is_help=True)
telemetry_app = typer.Typer(help="Device telemetry held by the control plane.", no_args_is_help=True)

ServerOpt = Annotated[str | None, typer.Option(
    "--server", help="control plane URL (default: EDGEGEN_FLEET__SERVER_URL or https://127.0.0.1:8700)")]
TokenOpt = Annotated[str | None, typer.Option(
    "--admin-token", help="admin API token (default: EDGEGEN_FLEET__ADMIN_TOKEN or <data>/admin_token)")]


ReasonOpt = Annotated[str, typer.Option("--reason", help="recorded in the history (default: none)")]


def _client(server: str | None, token: str | None):  # -> RolloutClient
    from edgegen.cli import fleet as fleet_cli
    from edgegen.fleet.rollout_client import RolloutClient

    token = token or fleet_cli._fleet("admin_token")
    if token is None:
        path = fleet_cli._data_dir() / "admin_token"
        if not path.exists():
            raise UserInputError("no admin token: pass --admin-token or set EDGEGEN_FLEET__ADMIN_TOKEN")
        token = path.read_text().strip()
    url = server or fleet_cli._fleet("server_url", "https://127.0.0.1:8700")
    verify = None
    if url.lower().startswith("https://"):  # the fleet CA and the operator's certificate (fleet/tls.py)
        from edgegen.fleet.tls import admin_context

        verify = admin_context(fleet_cli._keys_dir(None))
    return RolloutClient(url, token, verify=verify)


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


ROLLOUT_COLUMNS = {
    "id": "id", "model": "model", "version": lambda r: f"v{r['version']}", "group": "group", "state": "state",
    "stage": lambda r: f"{r['percent']}% of {','.join(map(str, r['stages']))}",
    "members": lambda r: f"{len(r['members'])}/{len(r['devices'])}",
    "rollback": lambda r: f"v{r['rollback_version']}" if r.get("rollback_version") else None,
    "result / last decision": lambda r: r.get("result") or r.get("reason") or r.get("last_decision"),
}


def _rollout_view(r: dict[str, Any]) -> list[Any]:
    out: list[Any] = [fields(r, {
        "rollout": "id", "model": "model", "version": lambda d: f"v{d['version']}",
        "previous version": "previous_version", "group": "group", "state": "state",
        "result": lambda d: d.get("result"),
        "stage": lambda d: f"{d['percent']}% (stage {d['stage_index'] + 1} of {len(d['stages'])}: "
                           f"{','.join(map(str, d['stages']))})",
        "gates": "gates", "no traffic": lambda d: f"after {d['no_traffic_s']:g}s: {d['on_no_traffic']}",
        "bake (s)": "bake_s", "rollback version": "rollback_version", "reason": "reason",
        "last decision": lambda d: d.get("last_decision"),
    }, title=f"rollout {r['id']}"), r["rollback_note"]]
    if r.get("readings"):
        out.append(table(r["readings"], {"gate": "gate", "value": "value", "reporting": "reporting",
                                         "needed": "needed", "breached": "breached"}, title="gates, live"))
    if r.get("devices") and isinstance(r["devices"][0], dict):
        out.append(table(r["devices"], {"device": "id", "in stage": "member", "runs": "active_version",
                                        "should run": "target", "status": "status",
                                        "why": lambda d: d.get("status_reason")}, title="devices"))
    if r.get("events"):
        out.append(table(r["events"], {"at": "at", "action": "action", "stage %": "percent", "reason": "reason"},
                         title="history"))
    return out


def rollout_cmd(
    model: Annotated[str, typer.Argument(help="model name devices follow")],
    version: Annotated[int, typer.Argument(help="the published version to roll out")],
    to: Annotated[str, typer.Option(
        "--to", help="which devices: 'all', a group name, KEY=VALUE (a label), profile:NAME (their reported "
                     "device profile), fits[:CTX] (the planner says the version fits their RAM at context CTX, "
                     "default 2048); join terms with ',' (all must hold)")] = "all",
    stages: Annotated[str, typer.Option("--stages", help="cumulative percentages")] = "10,50,100",
    gate: Annotated[list[str] | None, typer.Option(
        "--gate", help=f"{GATE_GRAMMAR}, repeatable. Holds while the metric is at most the threshold, once "
                       "DEVICES devices of the stage report (default 1; @1 = one device is enough). Replaces "
                       "only the default gate of the same metric; METRIC=off removes one. Defaults: "
                       "update_failure_rate<0@1, error_rate<0.05@1. Metrics: update_failure_rate, "
                       "error_rate, p95_latency_ms, p95_latency_ratio, logprob_drop, drift_rate, "
                       "heldout_ppl_ratio (a LoRA adapter's worst held-out perplexity ratio, scored by "
                       "devices run with --heldout-text)")] = None,
    bake: Annotated[float, typer.Option("--bake", help="seconds each stage must run before advancing")] = 0.0,
    settle: Annotated[float, typer.Option("--settle", help="share of a stage that must have installed")] = 1.0,
    no_traffic_s: Annotated[float, typer.Option(
        "--no-traffic-after", help="seconds a settled stage waits for request reports before the "
                                   "--on-no-traffic policy applies")] = 600.0,
    on_no_traffic: Annotated[NoTraffic, typer.Option(
        "--on-no-traffic", help="advance: on install health alone (each device's post-install health "
                                "check); halt: roll back; wait: for real traffic, for ever")] = NoTraffic.ADVANCE,
    rollback: Annotated[bool, typer.Option("--rollback/--no-rollback",
                                           help="sign a rollback version first (needs the keyring)")] = True,
    keys: Annotated[Path | None, typer.Option("--keys", help="keyring directory (default: <data>/keys)")] = None,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Roll VERSION of MODEL out to a group in stages, advancing only while the health gates hold.

    Refused when VERSION is not newer than what the group's devices run. Prints the version number
    it reserves for rollback, and why.
    """
    from edgegen.cli import fleet as fleet_cli

    key = None
    if rollback:
        from edgegen.fleet.keys import Keyring

        key = Keyring.open(fleet_cli._keys_dir(keys)).targets_key
    with _client(server, admin_token) as client:
        emit(client.start(model, version, to, stages=stages, gates=gate, key=key, bake_s=bake,
                          settle_fraction=settle, no_traffic_s=no_traffic_s, on_no_traffic=on_no_traffic.value),
             as_json, _rollout_view)


@rollouts_app.command("list")
def list_cmd(model: Annotated[str | None, typer.Option("--model", help="only this model (default: all)")] = None,
             server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every rollout, newest first."""
    with _client(server, admin_token) as client:
        emit(client.list(model), as_json, lambda rows: table(rows, ROLLOUT_COLUMNS, title="rollouts"))


@rollouts_app.command("show")
def show_cmd(rollout_id: int, server: ServerOpt = None, admin_token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """One rollout: stages, gates with their latest readings, members' versions and status, history."""
    with _client(server, admin_token) as client:
        emit(client.show(rollout_id), as_json, _rollout_view)


@rollouts_app.command("pause")
def pause_cmd(rollout_id: int, reason: ReasonOpt = "",
              server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Stop opening stages; devices keep what they run."""
    with _client(server, admin_token) as client:
        emit(client.pause(rollout_id, reason), as_json, _rollout_view)


@rollouts_app.command("resume")
def resume_cmd(rollout_id: int, server: ServerOpt = None, admin_token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Continue a paused rollout (its current stage is measured afresh)."""
    with _client(server, admin_token) as client:
        emit(client.resume(rollout_id), as_json, _rollout_view)


@rollouts_app.command("abort")
def abort_cmd(rollout_id: int, reason: ReasonOpt = "",
              server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """End the rollout; devices that installed the version go to the rollback version."""
    with _client(server, admin_token) as client:
        emit(client.abort(rollout_id, reason), as_json, _rollout_view)


@rollouts_app.command("tick")
def tick_cmd(server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Evaluate running rollouts now (the control plane also does it on its own schedule)."""
    with _client(server, admin_token) as client:
        emit(client.tick(), as_json, lambda rows: table(rows, {"rollout": "rollout", "action": "action",
                                                               "reason": "reason"}, title="decisions"))


@rollouts_app.command("stage")
def stage_cmd(model: str, server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """New versions of MODEL reach devices only through rollouts (the default; undoes `unstage`)."""
    with _client(server, admin_token) as client:
        emit(client.policy(model, staged=True), as_json, _policy_line)


@rollouts_app.command("unstage")
def unstage_cmd(model: str, server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Live publishing (opt-in): devices outside rollouts follow MODEL's newest published version."""
    with _client(server, admin_token) as client:
        emit(client.policy(model, staged=False), as_json, _policy_line)


def _policy_line(p: dict[str, Any]) -> str:
    if p["staged"]:
        return (f"{p['model']}: new versions ship only through rollouts; devices outside rollouts run "
                f"v{p['released_version']}" if p["released_version"] else f"{p['model']}: nothing released yet")
    return f"{p['model']}: live publishing: devices outside rollouts follow the newest published version"


@telemetry_app.command("streams")
def streams_cmd(server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Per device: events stored, duplicates ignored, events dropped by the device spool."""
    with _client(server, admin_token) as client:
        emit(client.telemetry_streams(), as_json,
             lambda rows: table(rows, {k: k for k in (rows[0] if rows else {"device_id": 0})}, title="streams"))


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
