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
from edgegen.cli._output import JsonOpt, emit, fields
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
    server: Annotated[str | None, typer.Option(
        "--server", help="control plane URL; required on the first run (with --enroll-token) unless --bundle "
                         "gives it; later runs default to the one recorded at enrolment")] = None,
    enroll_token: Annotated[str | None, typer.Option(
        "--enroll-token", help="one-time token from `edgegen fleet enroll-token`; required on the first run "
                               "unless --bundle gives it")] = None,
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", help="enrolment bundle from `edgegen fleet enroll-token --bundle FILE` (token, fleet CA to "
                         "pin for TLS, mutual-TLS enrolment certificate); replaces --enroll-token "
                         "(default: none)")] = None,
    at_rest_key: Annotated[Path | None, typer.Option(
        "--at-rest-key", help="device key file (created 0600 if missing; keep it OUTSIDE --data-dir): seals "
                              "installed models, adapters and the telemetry spool (default: no sealing)")] = None,
    name: Annotated[str, typer.Option("--name", help="device name shown to the admin (default: none)")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", help="an extra LoRA adapter stream to install and serve on the model's base, picked by "
                          "model name BASE+NAME (multi-LoRA); repeatable (default: none)")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", help="this device's profile to report (a JSON file `edgegen profile` wrote, or a shipped "
                          "profile's name): rollouts can then select it with --to profile:NAME or fits "
                          "(default: none reported)")] = None,
    heldout_text: Annotated[Path | None, typer.Option(
        "--heldout-text", help="opted-in text folder (*.txt): a new LoRA adapter is scored on its held-out tail, "
                               "base vs base + adapter perplexity, before it serves; only the two figures are "
                               "reported, for the heldout_ppl_ratio rollout gate (default: no check)")] = None,
    poll_interval: Annotated[float | None, typer.Option(
        "--poll-interval", help="seconds between polls (default: EDGEGEN_FLEET__POLL_INTERVAL_S)")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="run the Edge server on the active slot")] = True,
    host: Annotated[str | None, typer.Option("--host", help="Edge server host (default: EDGEGEN_SERVE__HOST)")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", help="Edge server port, 0: any free port; the URL is written to <data-dir>/serve.json "
                       "(default: EDGEGEN_SERVE__PORT)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Edge server threads (default: all cores)")] = None,
    max_latency: Annotated[float | None, typer.Option(
        "--max-latency", help="post-install health check bound, s (default: 60)")] = None,
    once: Annotated[bool, typer.Option("--once", help="one poll (carrying any update through), then exit")] = False,
    until_current: Annotated[bool, typer.Option("--until-current", help="exit once running the desired version")]
    = False,
    telemetry: Annotated[bool, typer.Option("--telemetry/--no-telemetry",
                                            help="spool and upload telemetry and drift signals (Fleet II)")] = True,
) -> None:
    """Enrol (first run), then poll the desired model and install it verified into the inactive slot.

    First run: --bundle FILE --data-dir DIR (or --server URL --enroll-token TOKEN). Later runs: --data-dir DIR.
    """
    from edgegen.agent.agent import Agent, AgentConfig, NotEnrolledError
    from edgegen.agent.health import HealthPolicy
    from edgegen.agent.quality import QualityPolicy
    from edgegen.agent.serving import EdgeServer, NullServer
    from edgegen.agent.trust import TrustLimits

    enrol_bundle = None
    if bundle is not None:
        import json

        try:
            enrol_bundle = json.loads(bundle.read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"cannot read the enrolment bundle {bundle}: {exc}") from exc
        enroll_token = enroll_token or enrol_bundle.get("token")
        server = server or enrol_bundle.get("server")
    if enroll_token and not server:
        raise UserInputError("--enroll-token needs --server (the control plane URL to enrol with)")
    settings = get_settings()
    fleet = settings.fleet
    config = AgentConfig(
        data_dir=data_dir, server=server, name=name, labels=_labels(label),
        poll_interval_s=poll_interval if poll_interval is not None else fleet.poll_interval_s,
        limits=TrustLimits(max_artifact_bytes=fleet.max_download_bytes),
        health=HealthPolicy(max_latency_s=max_latency or getattr(fleet, "health_max_latency_s", 60.0)),
        at_rest_key=at_rest_key, adapters=tuple(adapter or ()), profile=profile,
        quality=QualityPolicy(heldout_text) if heldout_text is not None else None,
    )
    if profile is not None:
        from edgegen.plan.profile import profile_json

        profile_json(profile)  # a profile that does not load: one line, exit 2, before anything runs
    edge = (EdgeServer(host or settings.serve.host, settings.serve.port if port is None else port,
                       n_ctx=settings.engine.n_ctx, n_threads=threads or settings.engine.n_threads)
            if serve else NullServer())
    tel = None
    if telemetry:  # Fleet II: telemetry spool + uploader + drift monitor, through the ModelServer seam
        from edgegen.sealed import DeviceKey
        from edgegen.telemetry.device import DeviceTelemetry

        tel = DeviceTelemetry.open(data_dir, spool_bytes=fleet.telemetry_spool_bytes,
                                   upload_interval_s=fleet.telemetry_upload_interval_s,
                                   key=DeviceKey.load_or_create(at_rest_key) if at_rest_key else None)
        edge = tel.wrap(edge)
    agent = Agent(config, server=edge)
    if enroll_token:
        device_id = agent.enroll(enroll_token, enrol_bundle)
        err_console.print(f"enrolled as {device_id}", highlight=False)
    elif not agent.enrolled():
        raise NotEnrolledError(f"{data_dir} holds no device credential: on the first run pass --server URL and "
                               "--enroll-token TOKEN (from `edgegen fleet enroll-token --model NAME`)")

    def start_telemetry() -> None:  # the credential from the agent: sealed at rest with --at-rest-key
        if tel is not None and agent.enrolled():
            cred = agent.credential()
            tel.start(server or cred["server"], cred["credential"], verify=agent.tls_context())

    start_telemetry()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def until(outcome: str) -> bool:
        if tel is not None:
            start_telemetry()  # no-op once started
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
def status_cmd(data_dir: Annotated[Path, typer.Option("--data-dir", help="the device's state directory")],
               as_json: JsonOpt = False) -> None:
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
    serve = data_dir / "serve.json"
    out["serve_url"] = json.loads(serve.read_text()).get("url") if serve.exists() else None
    emit(out, as_json, _status_view)


def _status_view(out: dict) -> list:
    act = out.get("active") or {}
    st = out.get("status") or {}
    upd = (out.get("journal") or {}).get("update")
    return [fields({"slot": act.get("slot"), "model": act.get("name"), "version": act.get("version"),
                    "sha256": (act.get("sha256") or "")[:16] or None, "last poll": st.get("outcome"),
                    "desired": st.get("desired"), "reason": st.get("reason"), "at": st.get("at"),
                    "update in progress": f"v{upd.get('version')} at {upd.get('step')}" if upd else None,
                    "serving at": out.get("serve_url")},
                   {k: k for k in ("slot", "model", "version", "sha256", "last poll", "desired", "reason", "at",
                                   "update in progress", "serving at")}, title="agent")]


@agent_app.command("ask")
def ask_cmd(
    prompt: Annotated[str, typer.Argument(help="the user message")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="the device's state directory")],
    wait: Annotated[float, typer.Option(
        "--wait", help="seconds to wait for the device to serve a model (0: do not wait)")] = 0.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="tokens to generate")] = 32,
    as_json: JsonOpt = False,
) -> None:
    """Send one chat request to the model this device serves (a smoke test after an update)."""
    import time

    import httpx

    from edgegen.errors import FleetError

    deadline = time.monotonic() + wait
    while True:
        try:
            url = json.loads((data_dir / "serve.json").read_text())["url"]
            model = json.loads((data_dir / "active.json").read_text())["name"]
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                    "temperature": 0}
            r = httpx.post(url.rstrip("/") + "/v1/chat/completions", json=body, timeout=120)
            if r.status_code == 200:
                out = r.json()
                break
            problem = f"the device's server answered {r.status_code}: {r.text[:200]}"
            if 400 <= r.status_code < 500 and r.status_code not in (404, 408, 429):
                raise FleetError(f"{data_dir}: {problem}")  # waiting will not fix the request
        except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
            problem = f"the device serves no model yet ({type(exc).__name__}: {exc})"
        if time.monotonic() >= deadline:
            raise FleetError(f"{data_dir}: {problem}")
        time.sleep(0.5)
    emit(out, as_json, lambda o: f"{o['model']}: {o['choices'][0]['message']['content'].strip()}")


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
