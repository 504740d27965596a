"""CLI commands for the fleet control plane: serve, keys, publish, enroll-token, revoke, devices, events.

List and show commands print a Rich table, or JSON with ``--json``. Commands that talk to the control
plane take ``--server`` (default: ``EDGEGEN_FLEET__SERVER_URL`` or https://127.0.0.1:8700) and
``--admin-token`` (default: ``EDGEGEN_FLEET__ADMIN_TOKEN`` or the ``admin_token`` file in the data dir).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgegen.cli._common import console, err_console
from edgegen.cli._output import JsonOpt, emit, fields, table
from edgegen.config import get_settings
from edgegen.errors import UserInputError

fleet_app = typer.Typer(help="Fleet control plane: signed model registry, enrolment, devices.",
                        no_args_is_help=True)
keys_app = typer.Typer(help="Publisher keys and root metadata (Ed25519).", no_args_is_help=True)
fleet_app.add_typer(keys_app, name="keys")

ServerOpt = Annotated[str | None, typer.Option(
    "--server", help="control plane URL (default: EDGEGEN_FLEET__SERVER_URL or https://127.0.0.1:8700)")]
TokenOpt = Annotated[str | None, typer.Option("--admin-token", help="admin API token "
                                                 "(default: EDGEGEN_FLEET__ADMIN_TOKEN or <data>/admin_token)")]
KeysOpt = Annotated[Path | None, typer.Option("--keys", help="keyring directory (default: <data>/keys)")]


def _fleet(name: str, default: Any = None) -> Any:
    return getattr(get_settings().fleet, name, default)


def _data_dir(data: Path | None = None) -> Path:
    return Path(data or _fleet("data_dir") or get_settings().home / "fleet")


def _keys_dir(keys: Path | None, data: Path | None = None) -> Path:
    return Path(keys or _fleet("keys_dir") or _data_dir(data) / "keys")


def _admin(server: str | None, token: str | None):  # -> RolloutClient (the admin API and rollouts)
    from edgegen.fleet.rollout_client import RolloutClient as AdminClient

    token = token or _fleet("admin_token")
    if token is None:
        path = _data_dir() / "admin_token"
        if not path.exists():
            raise UserInputError(f"no admin token: pass --admin-token, set EDGEGEN_FLEET__ADMIN_TOKEN, or run "
                                 f"on the control plane's machine (it writes {path})")
        token = path.read_text().strip()
    url = server or _fleet("server_url", "https://127.0.0.1:8700")
    verify = None
    if url.lower().startswith("https://"):  # trust only the fleet CA; present the admin certificate (mTLS)
        from edgegen.fleet.tls import admin_context

        verify = admin_context(_keys_dir(None))
    return AdminClient(url, token, verify=verify)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"a label is KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@fleet_app.command("serve")
def serve_cmd(
    db: Annotated[str | None, typer.Option("--db", help="database URL (default: sqlite:///<data>/fleet.db)")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="data directory: blobs, sqlite, admin token (default: EDGEGEN_FLEET__DATA_DIR or "
                       "<EDGEGEN_HOME>/fleet)")] = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to bind")] = 8700,
    keys: KeysOpt = None,
    admin_token: TokenOpt = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="plain HTTP, no TLS (only behind a TLS-terminating proxy or for local tests)")] = False,
    mtls: Annotated[bool, typer.Option(
        "--mtls", help="mutual TLS: every connection needs a client certificate from the fleet CA "
                       "(devices get theirs at enrolment, the operator's is <keys>/tls/admin.pem)")] = False,
) -> None:
    """Run the control plane (FastAPI + SQLAlchemy; migrations run at startup) and its web console.

    TLS by default, with the certificate `fleet keys init` made under <keys>/tls; --insecure for HTTP.

    Prints the console's URL and where the admin token that logs in to it lives.
    """
    import uvicorn

    from edgegen.fleet.app import create_app
    from edgegen.fleet.state import ControlPlaneConfig

    data_dir = _data_dir(data)
    keys_dir = _keys_dir(keys, data_dir)
    config = ControlPlaneConfig.from_settings(
        get_settings(), data_dir=data_dir, db_url=db, admin_token=admin_token,
        keys_dir=keys_dir if (keys_dir / "root").exists() else None, mutual_tls=mtls and not insecure,
    )
    ssl_kw: dict[str, Any] = {}
    if not insecure:
        from edgegen.fleet.tls import FleetCA

        ssl_kw = FleetCA.open(keys_dir).server_ssl(mutual=mtls)
    scheme = "http" if insecure else "https"
    app = create_app(config)
    token_src = ("the --admin-token you passed" if admin_token else "EDGEGEN_FLEET__ADMIN_TOKEN"
                 if _fleet("admin_token") else f"the file {data_dir / 'admin_token'}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    err_console.print(
        f"control plane on {scheme}://{shown}:{port} (data {data_dir}"
        f"{', mutual TLS' if mtls and not insecure else ''})\n"
        f"console: {scheme}://{shown}:{port}/ - log in with the admin token ({token_src})",
        highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", **ssl_kw)


@keys_app.command("init")
def keys_init_cmd(
    keys: KeysOpt = None,
    expires_days: Annotated[float, typer.Option("--expires-days", help="root metadata lifetime, days")] = 365.0,
    tls_host: Annotated[list[str] | None, typer.Option(
        "--tls-host", help="a DNS name or IP the control plane is reached by (repeatable; localhost and "
                           "127.0.0.1 are always included)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate root, targets and freshness keys (0600), root metadata v1, and the fleet CA with the
    control plane's TLS certificate (<keys>/tls)."""
    from edgegen.fleet.keys import Keyring
    from edgegen.fleet.tls import FleetCA

    ring = Keyring.init(_keys_dir(keys), expires_days=expires_days)
    FleetCA.init(ring.dir, tls_host or [])
    emit(ring.describe(), as_json, _keys_table)


@keys_app.command("show")
def keys_show_cmd(keys: KeysOpt = None, as_json: JsonOpt = False) -> None:
    """Key ids, root version and expiry of a keyring."""
    from edgegen.fleet.keys import Keyring

    emit(Keyring.open(_keys_dir(keys)).describe(), as_json, _keys_table)


def _keys_table(d: dict[str, Any]) -> Any:
    return fields(d, {k: k for k in d}, title="keyring")


@keys_app.command("rotate")
def keys_rotate_cmd(
    role: Annotated[str, typer.Option("--role", help="root or targets")] = "targets",
    keys: KeysOpt = None,
    expires_days: Annotated[float, typer.Option("--expires-days", help="new root metadata lifetime, days")] = 365.0,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    push: Annotated[bool, typer.Option("--push/--no-push", help="upload the new root to --server")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replace a key: root v(n+1) is signed by the old root key (and the new one for a root rotation)."""
    from edgegen.fleet.keys import Keyring

    ring = Keyring.open(_keys_dir(keys))
    ring.rotate(role, expires_days=expires_days)
    if push:
        with _admin(server, admin_token) as admin:
            admin.push_root(ring.root_bytes())
    emit(ring.describe(), as_json, _keys_table)


@keys_app.command("push")
def keys_push_cmd(keys: KeysOpt = None, server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Upload every root version of the keyring to the control plane (already known ones are skipped)."""
    from edgegen.fleet.keys import Keyring

    ring = Keyring.open(_keys_dir(keys))
    with _admin(server, admin_token) as admin:
        for data in ring.chain():
            admin.push_root(data)
    console.print(f"root v1..v{ring.root.version} published", highlight=False)


@fleet_app.command("publish")
def publish_cmd(
    artifact: Annotated[Path, typer.Argument(
        help="the model: a GGUF file, or an ONNX Runtime GenAI folder (shipped as one signed canonical tar)")],
    name: Annotated[str, typer.Option("--name", help="model name devices follow")],
    version: Annotated[int | None, typer.Option("--version", help="version number (default: latest + 1)")] = None,
    expires_days: Annotated[float | None, typer.Option(
        "--expires-days", help="manifest lifetime, days (default: EDGEGEN_FLEET__MANIFEST_EXPIRES_DAYS or 90)")] = None,
    to: Annotated[str | None, typer.Option(
        "--to", help="with --now: ship to 'all' devices of the model at once, or to a group, KEY=VALUE "
                     "label, profile:NAME or fits[:CTX] selector (a one-stage rollout with the default gates)")] = None,
    now: Annotated[bool, typer.Option("--now", help="ship at once to --to (no stages)")] = False,
    base: Annotated[str | None, typer.Option(
        "--base", help="ARTIFACT is a LoRA adapter for this base model: its GGUF file or sha256; devices "
                       "install the adapter only onto exactly that base (default: ARTIFACT is a full model)")] = None,
    keys: KeysOpt = None,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign a manifest for ARTIFACT with the targets key, upload it (zstd transfer too) and publish.

    Publishing ships nothing: devices get the version through a rollout (`edgegen fleet rollout`)
    or, explicitly, with `--to all --now`.
    """
    import tempfile

    from edgegen.fleet.keys import Keyring
    from edgegen.fleet.publish import build_release

    if (to is None) != (not now):
        raise UserInputError("--to and --now go together: `--to all --now` ships at once; without both, "
                             "publish only (then start a rollout)")
    ring = Keyring.open(_keys_dir(keys))
    with _admin(server, admin_token) as admin, tempfile.TemporaryDirectory(prefix="edgegen-publish-") as work:
        release = build_release(
            artifact, name=name, version=version or admin.next_version(name), key=ring.targets_key,
            work_dir=Path(work), expires_days=expires_days or _fleet("manifest_expires_days", 90.0),
            base_sha256=_base_sha256(base),
        )
        out = dict(admin.publish(release))
        out["shipped"] = None
        if to is not None:
            out["shipped"] = (admin.release(name, out["version"]) if to in ("all", "*") else
                              admin.start(name, out["version"], to, stages="100", key=ring.targets_key))
    emit(out, as_json, _published_table)


def _base_sha256(base: str | None) -> str | None:
    if base is None:
        return None
    if Path(base).is_file():
        from edgegen.fleet.publish import sha256_file

        return sha256_file(Path(base))[0]
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        return base
    raise UserInputError(f"--base {base!r} is neither a file nor a sha256 hex digest")


def _published_table(d: dict[str, Any]) -> Any:
    shipped = d.get("shipped")
    if shipped is None:
        note = (f"published, not shipped: no device gets v{d['version']} until a rollout sends it "
                f"(edgegen fleet rollout {d['name']} {d['version']} --to all)")
    elif "released_version" in shipped:
        note = f"released: every device of {d['name']} outside a rollout now runs v{shipped['released_version']}"
    else:
        note = f"rollout {shipped['id']} started to {shipped['group']} (one stage)"
    made = [x for x in d.get("deltas") or [] if x.get("sha256")]
    if made:
        sizes = ", ".join(f"{x['size']:,} of {x['full']:,} bytes from {x['base_sha256'][:12]}" for x in made)
        note += f"\ndeltas for the versions devices run: {sizes}"
    return [fields(d, {"model": "name", "version": "version", "sha256": "sha256", "size (bytes)": "size"},
                   title="published"), note]


@fleet_app.command("enroll-token")
def enroll_token_cmd(
    model: Annotated[str, typer.Option("--model", help="the model the device will follow")],
    group: Annotated[str | None, typer.Option("--group", help="group the device joins (default: none)")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable")] = None,
    ttl_s: Annotated[float | None, typer.Option(
        "--ttl-s", help="token lifetime in seconds (default: 86400, the control plane's setting)")] = None,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", help="also write the enrolment bundle (server, token, fleet CA to pin, mutual-TLS enrolment "
                         "certificate) to this file (0600), for `edgegen agent run --bundle FILE` "
                         "(default: none)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a one-time enrolment token (it pins the current root key); prints only the token.

    Give it to `edgegen agent run --server URL --enroll-token TOKEN --data-dir DIR` on the device, or,
    with TLS, the --bundle file to `edgegen agent run --bundle FILE --data-dir DIR`.
    """
    with _admin(server, admin_token) as admin:
        if bundle is not None:
            import os

            data = admin.enroll_bundle(model=model, group=group, labels=_labels(label), ttl_s=ttl_s)
            token = data["token"]
            fd = os.open(bundle, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
        else:
            token = admin.enroll_token(model=model, group=group, labels=_labels(label), ttl_s=ttl_s)
    if as_json:
        emit({"token": token, "model": model, "group": group}, True, lambda d: d)
    else:
        console.print(token, highlight=False, soft_wrap=True)


@fleet_app.command("revoke")
def revoke_cmd(
    device_id: Annotated[str, typer.Argument(help="the device id (see `edgegen fleet devices`)")],
    reason: Annotated[str, typer.Option("--reason", help="recorded with the revocation (default: none)")] = "",
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a device: every later call with its credential is refused."""
    with _admin(server, admin_token) as admin:
        emit(admin.revoke(device_id, reason), as_json, lambda d: f"revoked {d['id']} ({d.get('name') or 'no name'})")


DEVICE_COLUMNS = {
    "id": "id", "name": "name", "group": "group", "labels": "labels", "model": "model",
    "runs": lambda d: f"v{d['active_version']}" if d.get("active_version") is not None else None,
    "should run": lambda d: f"v{d['desired_version']}" if d.get("desired_version") is not None else None,
    "status": "status", "why": "status_reason", "last seen": "last_seen_at",
}


@fleet_app.command("devices")
def devices_cmd(server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every device: labels, the version it runs and should run, its status and why."""
    with _admin(server, admin_token) as admin:
        emit(admin.devices(), as_json, lambda rows: table(rows, DEVICE_COLUMNS, title="devices"))


@fleet_app.command("device")
def device_cmd(
    device_id: Annotated[str, typer.Argument(help="the device id")],
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One device: its record, status with the reason, and its recent events."""
    with _admin(server, admin_token) as admin:
        emit(admin.device(device_id), as_json,
             lambda d: [fields(d, DEVICE_COLUMNS, title=f"device {d['id']}"),
                        table(d["events"], EVENT_COLUMNS, title="recent events")])


EVENT_COLUMNS = {"at": "at", "device": "device_id", "kind": "kind", "ok": "ok", "version": "version",
                 "reason": "reason"}


@fleet_app.command("events")
def events_cmd(
    device: Annotated[str | None, typer.Option("--device", help="only this device (default: all)")] = None,
    limit: Annotated[int, typer.Option("--limit", help="most recent N events")] = 50,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Device events, newest first (reports, refusals)."""
    with _admin(server, admin_token) as admin:
        emit(admin.events(device, limit), as_json, lambda rows: table(rows, EVENT_COLUMNS, title="events"))


@fleet_app.command("status")
def status_cmd(
    wait: Annotated[float, typer.Option(
        "--wait", help="seconds to wait for the control plane to answer (0: do not wait)")] = 0.0,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The control plane at a glance: models and released versions, devices by status, active rollouts."""
    import time

    from edgegen.errors import FleetError

    deadline = time.monotonic() + wait
    while True:
        try:
            with _admin(server, admin_token) as admin:
                models, devices, rollouts = admin.models(), admin.devices(), admin.list()
                url = str(admin.http.base_url)
            break
        except (FleetError, UserInputError) as exc:
            if time.monotonic() >= deadline or (isinstance(exc, UserInputError) and "admin token" not in str(exc)):
                raise
            time.sleep(0.5)
    by_status: dict[str, int] = {}
    for d in devices:
        by_status[d["status"]] = by_status.get(d["status"], 0) + 1
    out = {"server": url, "console": url.rstrip("/") + "/",
           "models": [{"name": m["name"], "versions": len(m["versions"]), "released_version": m.get("released_version")}
                      for m in models],
           "devices": by_status, "active_rollouts": [r for r in rollouts if r["state"] in ("running", "paused")]}
    emit(out, as_json, lambda o: [
        f"control plane {o['server']} (console {o['console']})",
        table(o["models"], {"model": "name", "versions": "versions", "released": "released_version"}, title="models"),
        table([{"status": k, "devices": v} for k, v in sorted(o["devices"].items())],
              {"status": "status", "devices": "devices"}, title="devices"),
        table(o["active_rollouts"], {"id": "id", "model": "model", "version": "version", "state": "state",
                                     "stage %": "percent"}, title="active rollouts")])


@fleet_app.command("models")
def models_cmd(server: ServerOpt = None, admin_token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Published models and versions (signed manifests' facts) and the version released to devices."""
    with _admin(server, admin_token) as admin:
        models = admin.models()
        rows = [{"model": m["name"], **v, "released": v["version"] == m.get("released_version")}
                for m in models for v in m["versions"]]
        emit(models if as_json else rows, as_json, lambda r: table(r, {
            "model": "model", "version": "version", "released": "released", "architecture": "architecture",
            "quantization": "quantization", "size (bytes)": "size", "sha256": lambda v: v["sha256"][:16],
            "expires": "expires"}, title="models"))


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
