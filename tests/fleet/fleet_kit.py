"""Test kit shared by tests/fleet and tests/agent: a live control plane on 127.0.0.1 (port 0), a
publisher with a real keyring, model variants (same weights, different metadata bytes), and a
PostgreSQL finder/starter. Imported by both conftest files (tests/agent adds this folder to sys.path).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import uvicorn

from edgegen.fleet.app import create_app
from edgegen.fleet.keys import Keyring
from edgegen.fleet.publish import AdminClient, Release, build_release
from edgegen.fleet.state import ControlPlaneConfig

ADMIN_TOKEN = "test-admin-token"
PG_WELL_KNOWN = "postgresql://edgegen@127.0.0.1:55432/edgegen"


# ---- model variants ------------------------------------------------------------------------------


def make_variant(src: Path, dst: Path, tag: str) -> Path:
    """A copy of a GGUF whose ``general.name`` value is replaced by ``tag`` (same length): same
    weights, different bytes and sha256, still a valid loadable GGUF."""
    data = bytearray(src.read_bytes())
    name = b"stories260K"
    assert len(tag) == len(name), "tag must keep the string length"
    i = data.find(name)
    assert i > 0, "general.name not found"
    data[i : i + len(name)] = tag.encode()
    dst.write_bytes(bytes(data))
    return dst


# ---- a live control plane ------------------------------------------------------------------------


class LiveServer:
    """uvicorn in a thread on a socket bound to 127.0.0.1:0; ``ssl``: uvicorn's TLS options (https)."""

    def __init__(self, app, ssl: dict | None = None) -> None:  # type: ignore[no-untyped-def]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"{'https' if ssl else 'http'}://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **(ssl or {})))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "control plane did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class Fleet:
    """A control plane with a keyring and a publisher, for one test."""

    def __init__(self, root: Path, db_url: str | None = None) -> None:
        self.root = root
        self.keyring = Keyring.init(root / "keys")
        self.config = ControlPlaneConfig(data_dir=root / "plane", db_url=db_url, admin_token=ADMIN_TOKEN,
                                         keys_dir=root / "keys")
        self.app = create_app(self.config)
        self.plane = self.app.state.fleet
        self.live = LiveServer(self.app)
        self.url = self.live.url
        self.admin = AdminClient(self.url, ADMIN_TOKEN)
        self._n = 0

    def __enter__(self) -> Fleet:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.admin.close()
        self.live.__exit__()
        self.plane.engine.dispose()

    def release(self, artifact: Path, version: int, *, name: str = "stories", expires_days: float = 30,
                now: datetime | None = None, **kw) -> Release:  # type: ignore[no-untyped-def]
        self._n += 1
        return build_release(artifact, name=name, version=version, key=kw.pop("key", self.keyring.targets_key),
                             work_dir=self.root / "work" / str(self._n), expires_days=expires_days, now=now, **kw)

    def publish(self, artifact: Path, version: int, *, ship: bool = True, **kw) -> Release:  # type: ignore[no-untyped-def]
        """Publish, and (``ship``) release to every device at once, as ``fleet publish --to all --now``."""
        rel = self.release(artifact, version, **kw)
        self.admin.publish(rel)
        if ship:
            self.admin.release(rel.manifest.name, version)
        return rel

    def token(self, model: str = "stories") -> str:
        return self.admin.enroll_token(model=model)

    def events(self, device_id: str | None = None) -> list[dict]:
        return self.admin.events(device_id)


def expired_now() -> datetime:
    """A creation time whose 1-day manifest expired an hour ago."""
    return datetime.now(timezone.utc) - timedelta(days=1, hours=1)


# ---- PostgreSQL ----------------------------------------------------------------------------------


def _can_connect(url: str) -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        return f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return None


def _pg_bin() -> Path | None:
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return cands[-1].parent if cands else None


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str | None, str]]:
    """(admin URL or None, how it was found or why not). Starts a throwaway cluster if needed."""
    env_url = os.environ.get("EDGEGEN_TEST_PG_URL")
    if env_url:
        why = _can_connect(env_url)
        yield (None, f"EDGEGEN_TEST_PG_URL={env_url} does not connect: {why}") if why else (env_url, "env")
        return
    if _can_connect(PG_WELL_KNOWN) is None:
        yield PG_WELL_KNOWN, "scripts/ci/postgres.sh cluster on 127.0.0.1:55432"
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        yield None, "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin); run scripts/ci/postgres.sh"
        return
    tmp = Path(tempfile.mkdtemp(prefix="edgegen-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            yield None, "running as root without runuser: cannot start PostgreSQL as a non-root user"
            return
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp / "data"
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "edgegen", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=90)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        yield None, f"could not start a throwaway PostgreSQL: {exc} {detail.decode(errors='replace')[:300]}"
        shutil.rmtree(tmp, ignore_errors=True)
        return
    url = f"postgresql://edgegen@127.0.0.1:{port}/postgres"
    try:
        yield url, f"throwaway cluster in {tmp}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database on the server for one test, dropped afterwards."""
    import psycopg

    name = "edgegen_t_" + secrets.token_hex(6)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- fixtures (re-exported by tests/fleet/conftest.py and tests/agent/conftest.py) ---------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    with postgres_server() as (url, how):
        if url is None:
            pytest.skip(f"PostgreSQL unavailable, persistence tests on PostgreSQL skipped: {how}")
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The persistence tests run on SQLite (a file) and on a real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    admin = request.getfixturevalue("pg_admin_url")
    with fresh_database(admin) as url:
        yield url


@pytest.fixture(scope="session")
def model_versions(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """stories260K (F32) as versions 1..8: same weights, distinct bytes (general.name)."""
    d = tmp_path_factory.mktemp("versions")
    return {v: make_variant(stories_gguf, d / f"stories-v{v}.gguf", f"stories-v{v:02d}") for v in range(1, 9)}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(tmp_path / "fleet") as f:
        yield f
