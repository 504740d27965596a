"""CLI commands for the fleet control plane: serve, keys, publish, enroll-token, revoke, devices, events."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgegen.cli._common import console, err_console
from edgegen.config import get_settings
from edgegen.errors import UserInputError

fleet_app = typer.Typer(help="Fleet control plane: signed model registry, enrolment, devices.",
                        no_args_is_help=True)
keys_app = typer.Typer(help="Publisher keys and root metadata (Ed25519).", no_args_is_help=True)
fleet_app.add_typer(keys_app, name="keys")

ServerOpt = Annotated[str | None, typer.Option("--server", help="control plane URL")]
TokenOpt = Annotated[str | None, typer.Option("--admin-token", help="admin API token "
                                                 "(default: EDGEGEN_FLEET__ADMIN_TOKEN or <data>/admin_token)")]
KeysOpt = Annotated[Path | None, typer.Option("--keys", help="keyring directory (default: <data>/keys)")]


def _fleet(name: str, default: Any = None) -> Any:
    return getattr(get_settings().fleet, name, default)


def _data_dir(data: Path | None = None) -> Path:
    return Path(data or _fleet("data_dir") or get_settings().home / "fleet")


def _keys_dir(keys: Path | None, data: Path | None = None) -> Path:
    return Path(keys or _fleet("keys_dir") or _data_dir(data) / "keys")


def _admin(server: str | None, token: str | None):  # -> AdminClient
    from edgegen.fleet.publish import AdminClient

    token = token or _fleet("admin_token")
    if token is None:
        path = _data_dir() / "admin_token"
        if not path.exists():
            raise UserInputError("no admin token: pass --admin-token or set EDGEGEN_FLEET__ADMIN_TOKEN")
        token = path.read_text().strip()
    return AdminClient(server or _fleet("server_url", "http://127.0.0.1:8700"), token)


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
    data: Annotated[Path | None, typer.Option("--data", help="data directory (blobs, sqlite, admin token)")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8700,
    keys: KeysOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Run the control plane (FastAPI + SQLAlchemy; migrations run at startup)."""
    import uvicorn

    from edgegen.fleet.app import create_app
    from edgegen.fleet.state import ControlPlaneConfig

    data_dir = _data_dir(data)
    keys_dir = _keys_dir(keys, data_dir)
    config = ControlPlaneConfig.from_settings(
        get_settings(), data_dir=data_dir, db_url=db, admin_token=admin_token,
        keys_dir=keys_dir if (keys_dir / "root").exists() else None,
    )
    app = create_app(config)
    token_src = "--admin-token" if (admin_token or _fleet("admin_token")) else str(data_dir / "admin_token")
    err_console.print(f"control plane on http://{host}:{port} (data {data_dir}; admin token: {token_src})",
                      highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@keys_app.command("init")
def keys_init_cmd(
    keys: KeysOpt = None,
    expires_days: Annotated[float, typer.Option("--expires-days", help="root metadata lifetime")] = 365.0,
) -> None:
    """Generate root and targets keys (0600) and root metadata v1."""
    from edgegen.fleet.keys import Keyring

    _print_json(Keyring.init(_keys_dir(keys), expires_days=expires_days).describe())


@keys_app.command("show")
def keys_show_cmd(keys: KeysOpt = None) -> None:
    """Key ids, root version and expiry of a keyring."""
    from edgegen.fleet.keys import Keyring

    _print_json(Keyring.open(_keys_dir(keys)).describe())


@keys_app.command("rotate")
def keys_rotate_cmd(
    role: Annotated[str, typer.Option("--role", help="root or targets")] = "targets",
    keys: KeysOpt = None,
    expires_days: Annotated[float, typer.Option("--expires-days")] = 365.0,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
    push: Annotated[bool, typer.Option("--push/--no-push", help="upload the new root to --server")] = False,
) -> None:
    """Replace a key: root v(n+1) is signed by the old root key (and the new one for a root rotation)."""
    from edgegen.fleet.keys import Keyring

    ring = Keyring.open(_keys_dir(keys))
    ring.rotate(role, expires_days=expires_days)
    if push:
        with _admin(server, admin_token) as admin:
            admin.push_root(ring.root_bytes())
    _print_json(ring.describe())


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
    artifact: Annotated[Path, typer.Argument(help="the model file (GGUF)")],
    name: Annotated[str, typer.Option("--name", help="model name devices follow")],
    version: Annotated[int | None, typer.Option("--version", help="default: latest + 1")] = None,
    expires_days: Annotated[float | None, typer.Option("--expires-days")] = None,
    keys: KeysOpt = None,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Sign a manifest for ARTIFACT with the targets key, upload it (zstd transfer too) and publish."""
    import tempfile

    from edgegen.fleet.keys import Keyring
    from edgegen.fleet.publish import build_release

    ring = Keyring.open(_keys_dir(keys))
    with _admin(server, admin_token) as admin, tempfile.TemporaryDirectory(prefix="edgegen-publish-") as work:
        release = build_release(
            artifact, name=name, version=version or admin.next_version(name), key=ring.targets_key,
            work_dir=Path(work), expires_days=expires_days or _fleet("manifest_expires_days", 90.0),
        )
        _print_json(admin.publish(release))


@fleet_app.command("enroll-token")
def enroll_token_cmd(
    model: Annotated[str | None, typer.Option("--model", help="the model the device will follow")] = None,
    group: Annotated[str | None, typer.Option("--group")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable")] = None,
    ttl_s: Annotated[float | None, typer.Option("--ttl-s", help="token lifetime in seconds")] = None,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Issue a one-time enrolment token (it pins the current root key)."""
    with _admin(server, admin_token) as admin:
        console.print(admin.enroll_token(model=model, group=group, labels=_labels(label), ttl_s=ttl_s),
                      highlight=False, soft_wrap=True)


@fleet_app.command("revoke")
def revoke_cmd(
    device_id: str,
    reason: Annotated[str, typer.Option("--reason")] = "",
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Revoke a device: every later call with its credential is refused."""
    with _admin(server, admin_token) as admin:
        _print_json(admin.revoke(device_id, reason))


@fleet_app.command("devices")
def devices_cmd(server: ServerOpt = None, admin_token: TokenOpt = None) -> None:
    """Every device with its last reported state."""
    with _admin(server, admin_token) as admin:
        _print_json(admin.devices())


@fleet_app.command("events")
def events_cmd(
    device: Annotated[str | None, typer.Option("--device")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    server: ServerOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Device events, newest first (reports, refusals)."""
    with _admin(server, admin_token) as admin:
        _print_json(admin.events(device, limit))


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
