"""Store-and-forward, end to end over loopback: a real control plane process (SQLite) is killed and
restarted while a device process keeps generating telemetry; the device process is SIGKILLed at
random points too. Every event the device's spool ever assigned a seq to must be stored exactly
once: seqs 1..N, no gap, no duplicate, nothing dropped."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleet2_harness import ADMIN, ProcessServer, Registry
from sqlalchemy import func, select

from edgegen.fleet.db import make_engine, session_factory
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.telemetry import store
from edgegen.telemetry.spool import Spool

DEVICE = Path(__file__).with_name("telemetry_device.py")


def start_device(data: Path, url: str, token: str, stop: Path, p_kill: float = 0.15) -> subprocess.Popen[bytes]:
    log = open(data.parent / "device.log", "ab")
    return subprocess.Popen([sys.executable, str(DEVICE), str(data), url, token, str(stop), "200", str(p_kill)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def spooled_since(data: Path, t: float) -> bool:
    """Whether the device's spool holds an event stamped at or after ``t`` (read-only look)."""
    path = data / "telemetry" / "spool.db"
    if not path.exists():
        return False
    with Spool(path, max_bytes=64 * 1024**2) as spool:
        return any(e.ts >= t for e in spool.peek(limit=100_000, max_bytes=64 * 1024**2))


def test_outage_and_sigkills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("EDGEGEN_TEST_SEED", "6")))
    reg = Registry.create(tmp_path)
    cp = ProcessServer(tmp_path / "cp", reg.keys.dir)
    (tmp_path / "cp").mkdir()
    cp.start()
    with RolloutClient(cp.url, ADMIN) as client:
        token = client.enroll_token(model="smol")
    data, stop = tmp_path / "device", tmp_path / "stop"
    device = start_device(data, cp.url, token, stop)
    kills = self_kills = preempted = 0
    t0 = time.monotonic()
    outage: tuple[float, float] | None = None
    # timeline: ~2 s online, control plane down ~4 s, back up; the device is SIGKILLed 6 times at
    # random moments throughout (appending, uploading, between "stored" and "acked")
    kill_at = sorted(rng.uniform(0.5, 11.0) for _ in range(6))
    down_at, up_at = 2.0 + rng.uniform(0, 1), 6.5 + rng.uniform(0, 1)
    while time.monotonic() - t0 < 12.0 or kill_at or outage is None or outage[1] == 0.0:
        now = time.monotonic() - t0
        if outage is None and now >= down_at:
            cp.stop(signal.SIGKILL)
            outage = (time.time(), 0.0)
        # bring it back once the device has spooled events during the outage (a loaded machine may
        # spend the planned window restarting the device); bounded, so the loop always ends
        if outage is not None and outage[1] == 0.0 and now >= up_at and (
                spooled_since(data, outage[0]) or now >= up_at + 20.0):
            outage = (outage[0], time.time())
            cp.start()
        if kill_at and now >= kill_at[0]:
            kill_at.pop(0)
            if device.poll() is None:
                device.send_signal(signal.SIGKILL)
                device.wait(10)
                kills += 1
            elif device.returncode == -signal.SIGKILL:  # it had just killed itself: that death counts
                self_kills += 1
                preempted += 1
            else:
                raise AssertionError(f"the device exited with {device.returncode}: "
                                     + (tmp_path / "device.log").read_text()[-3000:])
            time.sleep(rng.uniform(0.0, 0.5))
            device = start_device(data, cp.url, token, stop)
        if device.poll() == -signal.SIGKILL:  # killed itself after a send: back up it comes
            self_kills += 1
            device = start_device(data, cp.url, token, stop)
        time.sleep(0.05)
    if self_kills == 0:
        # a slow machine sends few batches, so the random kill-after-ack may never fire: force one, so
        # the worst moment (stored by the control plane, not yet forgotten by the device) is always tried
        device.send_signal(signal.SIGKILL)
        device.wait(10)
        forced = start_device(data, cp.url, token, stop, p_kill=1.0)
        assert forced.wait(90) == -signal.SIGKILL, "the device never completed an acknowledged send"
        self_kills += 1
        device = start_device(data, cp.url, token, stop)
    stop.write_text("stop")
    rc = device.wait(90)
    while rc == -signal.SIGKILL:  # it killed itself after a send: restart it until it drains
        self_kills += 1
        device = start_device(data, cp.url, token, stop)
        rc = device.wait(90)
    assert rc == 0, (tmp_path / "device.log").read_text()[-3000:]
    assert (data / "drained").read_text() == "0"
    cp.stop()

    with Spool(data / "telemetry" / "spool.db") as spool:
        st = spool.stats()
    engine = make_engine(f"sqlite:///{tmp_path / 'cp' / 'fleet.db'}")
    with session_factory(engine)() as s:
        (stream,) = store.streams(s)
        seqs = store.stored_seqs(s, stream.device_id, st.stream)
        n_requests = s.scalar(select(func.count()).select_from(store.TelemetryEvent).where(
            store.TelemetryEvent.kind == "request"))
        in_outage = s.scalar(select(func.count()).select_from(store.TelemetryEvent).where(
            store.TelemetryEvent.at >= _dt(outage[0]), store.TelemetryEvent.at <= _dt(outage[1])))
        counters = {c.name: c.value for c in store.counters(s)}
    engine.dispose()
    assert st.dropped == 0 and st.pending == 0
    assert seqs == list(range(1, st.last_seq + 1)), "lost or duplicated telemetry"
    assert stream.stored == st.last_seq and stream.dropped_total == 0
    assert counters["requests_total"] == n_requests  # counters counted each event once too
    assert in_outage > 0  # events generated while the control plane was down arrived
    assert kills + preempted == 6 and kills >= 2  # the planned SIGKILLs happened
    assert stream.duplicates > 0  # some batches were re-sent after a kill between "stored" and "acked"
    print(f"\nstore-and-forward: {st.last_seq} events, {in_outage} generated during a "
          f"{outage[1] - outage[0]:.1f}s control-plane outage, {kills} device SIGKILLs by the test, "
          f"{self_kills} self-SIGKILLs between the control plane's ack and the spool's, "
          f"{stream.duplicates} re-sent duplicates ignored, 0 lost, 0 stored twice")


def _dt(t: float):  # noqa: ANN202
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, tz=timezone.utc)
