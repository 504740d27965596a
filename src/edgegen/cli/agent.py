"""CLI commands for the device agent: ``edgegen agent run`` and ``edgegen agent status``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli._common import err_console
from edgegen.config import get_settings
from edgegen.errors import UserInputError

agent_app = typer.Typer(help="Device agent: verified A/B model updates from the control plane.",
                        no_args_is_help=True)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"a label is KEY=VALUE, not {item!r}")
        out[key] = value
    return out


@agent_app.command("run")
def run_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="the device's state: credential, slots, journal")],
    server: Annotated[str | None, typer.Option("--server", help="control plane URL")] = None,
    enroll_token: Annotated[str | None, typer.Option("--enroll-token", help="one-time token (first run)")] = None,
    name: Annotated[str, typer.Option("--name", help="device name shown to the admin")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable")] = None,
    poll_interval: Annotated[float | None, typer.Option("--poll-interval", help="seconds")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="run the Edge server on the active slot")] = True,
    host: Annotated[str | None, typer.Option("--host", help="Edge server host")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Edge server port (0: any free port)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Edge server threads")] = None,
    max_latency: Annotated[float | None, typer.Option("--max-latency", help="health check bound, s")] = None,
    once: Annotated[bool, typer.Option("--once", help="one poll (carrying any update through), then exit")] = False,
    until_current: Annotated[bool, typer.Option("--until-current", help="exit once running the desired version")]
    = False,
    telemetry: Annotated[bool, typer.Option("--telemetry/--no-telemetry",
                                            help="spool and upload telemetry and drift signals (Fleet II)")] = True,
) -> None:
    """Enrol (first run), then poll the desired model and install it verified into the inactive slot."""
    from edgegen.agent.agent import Agent, AgentConfig, NotEnrolledError
    from edgegen.agent.health import HealthPolicy
    from edgegen.agent.serving import EdgeServer, NullServer
    from edgegen.agent.trust import TrustLimits

    settings = get_settings()
    fleet = settings.fleet
    config = AgentConfig(
        data_dir=data_dir, server=server, name=name, labels=_labels(label),
        poll_interval_s=poll_interval if poll_interval is not None else fleet.poll_interval_s,
        limits=TrustLimits(max_artifact_bytes=fleet.max_download_bytes),
        health=HealthPolicy(max_latency_s=max_latency or getattr(fleet, "health_max_latency_s", 60.0)),
    )
    edge = (EdgeServer(host or settings.serve.host, settings.serve.port if port is None else port,
                       n_ctx=settings.engine.n_ctx, n_threads=threads or settings.engine.n_threads)
            if serve else NullServer())
    tel = None
    if telemetry:  # Fleet II: telemetry spool + uploader + drift monitor, through the ModelServer seam
        from edgegen.telemetry.device import DeviceTelemetry

        tel = DeviceTelemetry.open(data_dir, spool_bytes=fleet.telemetry_spool_bytes,
                                   upload_interval_s=fleet.telemetry_upload_interval_s)
        edge = tel.wrap(edge)
    agent = Agent(config, server=edge)
    if enroll_token:
        device_id = agent.enroll(enroll_token)
        err_console.print(f"enrolled as {device_id}", highlight=False)
    elif not agent.enrolled():
        raise NotEnrolledError(f"{data_dir} holds no device credential: pass --server and --enroll-token")
    if tel is not None:
        tel.start(server)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def until(outcome: str) -> bool:
        if tel is not None:
            tel.start(server)  # no-op once started
            tel.sample_memory()
        if once:
            return True
        return until_current and outcome == "current"

    try:
        agent.recover()
        last = agent.run(stop, until=until)
    finally:
        agent.close()
        if tel is not None:
            tel.close()
    if last in ("auth_refused", "error") and (once or until_current):
        sys.exit(1)


@agent_app.command("status")
def status_cmd(data_dir: Annotated[Path, typer.Option("--data-dir")]) -> None:
    """The device's active slot and version, any update in progress, and the last poll's outcome."""
    from edgegen.agent.slots import Slots

    act = Slots(data_dir).active()
    out = {"active": act.__dict__ if act else None}
    for name in ("journal.json", "status.json"):
        path = data_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            if name == "journal.json" and data.get("update"):
                data["update"] = {k: v for k, v in data["update"].items() if k != "envelope"}
            out[name.split(".")[0]] = data
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
