"""Telemetry ingest rate of the control plane, into SQLite and into PostgreSQL (JSON on stdout).

Two measurements per database, on a fresh, migrated schema:
    store   ``edgegen.telemetry.store.ingest`` called directly (the database path alone), from
            ``--devices`` threads, each sending ``--batches`` batches of ``--batch`` request events
    http    the same batches POSTed to ``/v1/telemetry`` of a real control plane process on
            127.0.0.1 (uvicorn, one worker) by ``--devices`` enrolled devices in parallel: what a
            fleet of uploading agents sees, authentication and validation included
A share of the batches (``--resend``) is sent twice, as agents do after a crash between the
control plane's ack and their own; the report checks every event was stored exactly once.

PostgreSQL: ``--pg-url`` (an admin URL; a database is created and dropped), else
``EDGEGEN_TEST_PG_URL``, else the cluster ``scripts/ci/postgres.sh`` starts on 127.0.0.1:55432
(the script is run when nothing answers). Without a server the PostgreSQL entry says why.

    .venv/bin/python bench/telemetry_ingest.py [--devices 8] [--batches 20] [--batch 500] [--only sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from edgegen.fleet.db import Device, make_engine, migrate, session_factory
from edgegen.telemetry import store
from edgegen.telemetry.events import Batch, Event, TelemetryKind, request_body

REPO = Path(__file__).resolve().parent.parent
PG_WELL_KNOWN = "postgresql://edgegen@127.0.0.1:55432/edgegen"

SERVE = """
import sys, uvicorn
from pathlib import Path
from edgegen.fleet.app import create_app
from edgegen.fleet.state import ControlPlaneConfig
data, keys, token, port, db = sys.argv[1:6]
app = create_app(ControlPlaneConfig(data_dir=Path(data), admin_token=token, keys_dir=Path(keys), db_url=db))
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""


def batches_for(device: int, n_batches: int, size: int, stream: str) -> list[Batch]:
    out, seq, t = [], 0, time.time()
    for _ in range(n_batches):
        events = []
        for _ in range(size):
            seq += 1
            body = request_body(model_version=1, prompt_tokens=20 + seq % 7, completion_tokens=16,
                                ttft_s=0.04 + (seq % 13) / 1000, total_s=0.3 + (seq % 17) / 100,
                                mean_logprob=-1.0 - (seq % 5) / 10)
            events.append(Event(seq, t + seq / 1000, TelemetryKind.REQUEST, body))
        out.append(Batch(stream, tuple(events)))
    return out


def plan(devices: int, n_batches: int, size: int, resend: float) -> list[list[Batch]]:
    work = []
    for d in range(devices):
        bs = batches_for(d, n_batches, size, f"bench{d}")
        every = max(1, round(1 / resend)) if resend > 0 else 0
        seq_plan = []
        for i, b in enumerate(bs):
            seq_plan.append(b)
            if every and i % every == 0:
                seq_plan.append(b)  # the same batch again: must be stored once
        work.append(seq_plan)
    return work


def run_threads(work: list[list[Batch]], send: Any) -> float:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for b in work[i]:
                send(i, b)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(work))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def check(url: str, device_ids: list[str], expected: int) -> dict[str, Any]:
    engine = make_engine(url)
    with session_factory(engine)() as s:
        stored = sum(len(store.stored_seqs(s, d)) for d in device_ids)
        streams = store.streams(s)
    engine.dispose()
    return {"stored": stored, "expected": expected, "exactly_once": stored == expected,
            "duplicates_ignored": sum(st.duplicates for st in streams)}


def bench_store(url: str, work: list[list[Batch]]) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    ids = [f"bench-dev-{i}" for i in range(len(work))]
    with sessions() as s:
        for d in ids:
            s.add(Device(id=d, credential_hash="0" * 64, model_name="bench"))
        s.commit()

    def send(i: int, b: Batch) -> None:
        with sessions() as s:
            store.ingest(s, ids[i], b)

    sent = sum(len(b.events) for w in work for b in w)
    wall = run_threads(work, send)
    engine.dispose()
    unique = sum(len({e.seq for b in w for e in b.events}) for w in work)
    return {"events_sent": sent, "seconds": round(wall, 3), "events_per_s": round(sent / wall),
            **check(url, ids, unique)}


def bench_http(url: str, work: list[list[Batch]], root: Path) -> dict[str, Any]:
    from edgegen.fleet.keys import Keyring
    from edgegen.fleet.publish import AdminClient

    keys = Keyring.init(root / "keys")
    token = secrets.token_urlsafe(16)
    with socket_port() as port:
        pass
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(root / "cp"), str(keys.dir), token, str(port), url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control plane did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.1)
        clients, ids = [], []
        with AdminClient(base, token) as admin:
            for _ in work:
                r = httpx.post(base + "/v1/enroll", json={"token": admin.enroll_token(model="bench")}, timeout=30)
                r.raise_for_status()
                ids.append(r.json()["device_id"])
                clients.append(httpx.Client(base_url=base, timeout=60,
                                            headers={"Authorization": f"Bearer {r.json()['credential']}"}))

        def send(i: int, b: Batch) -> None:
            clients[i].post("/v1/telemetry", json=b.to_json()).raise_for_status()

        sent = sum(len(b.events) for w in work for b in w)
        wall = run_threads(work, send)
        for c in clients:
            c.close()
    finally:
        proc.terminate()
        proc.wait(30)
    unique = sum(len({e.seq for b in w for e in b.events}) for w in work)
    return {"events_sent": sent, "seconds": round(wall, 3), "events_per_s": round(sent / wall),
            **check(url, ids, unique)}


class socket_port:
    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.s.close()


def pg_admin_url(explicit: str | None) -> tuple[str | None, str]:
    import psycopg

    def ok(u: str) -> bool:
        try:
            psycopg.connect(u, connect_timeout=3).close()
            return True
        except Exception:  # noqa: BLE001
            return False

    for cand in [explicit, os.environ.get("EDGEGEN_TEST_PG_URL"), PG_WELL_KNOWN]:
        if cand and ok(cand):
            return cand, cand
    script = REPO / "scripts" / "ci" / "postgres.sh"
    if script.exists():
        subprocess.run(["bash", str(script)], capture_output=True, timeout=600)
        if ok(PG_WELL_KNOWN):
            return PG_WELL_KNOWN, "started by scripts/ci/postgres.sh"
    return None, "no PostgreSQL server reachable (scripts/ci/postgres.sh could not start one)"


class fresh_pg_db:
    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.name = "edgegen_bench_" + secrets.token_hex(4)

    def __enter__(self) -> str:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.name}"')
        return self.admin.rsplit("/", 1)[0] + "/" + self.name

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--resend", type=float, default=0.1, help="share of batches sent twice")
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    a = ap.parse_args()
    work = plan(a.devices, a.batches, a.batch, a.resend)
    out: dict[str, Any] = {
        "config": {"devices": a.devices, "batches_per_device": a.batches, "events_per_batch": a.batch,
                   "resend_share": a.resend},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    if a.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="edgegen-bench-") as tmp:
            out["sqlite"] = {
                "store": bench_store(f"sqlite:///{tmp}/store.db", work),
                "http": bench_http(f"sqlite:///{tmp}/http.db", work, Path(tmp) / "http"),
            }
    if a.only in (None, "postgresql"):
        admin, how = pg_admin_url(a.pg_url)
        if admin is None:
            out["postgresql"] = {"skipped": how}
        else:
            with tempfile.TemporaryDirectory(prefix="edgegen-bench-") as tmp:
                with fresh_pg_db(admin) as url:
                    store_res = bench_store(url, work)
                with fresh_pg_db(admin) as url:
                    http_res = bench_http(url, work, Path(tmp) / "http")
            out["postgresql"] = {"server": how, "store": store_res, "http": http_res}
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=2)
    sys.stdout.write("\n")
