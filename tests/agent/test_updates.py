"""The agent's update path against a real control plane on loopback: resume of an interrupted download
with HTTP Range, a failed health check keeping the old slot, recovery from a corrupted active slot,
root rotation, a desired version that moves on mid-update, and the same flow on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from agent_kit import BodyStream, HostileTransport, check_device, device_snapshot, make_agent, refusals
from fleet_kit import Fleet

from edgegen.agent.journal import CRASH_ENV, Journal, atomic_write
from edgegen.agent.slots import Slots


class CutStream(httpx.SyncByteStream):
    """Delivers ``keep`` bytes of the body, then the connection 'drops'."""

    def __init__(self, body: bytes, keep: int) -> None:
        self.body, self.keep = body, keep

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.body[: self.keep]
        raise httpx.ReadError("connection reset by peer")


def test_interrupted_download_resumes_with_range(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rel = fleet.publish(model_versions[1], 1)
    mirror = HostileTransport()
    agent = make_agent(fleet.url, tmp_path / "dev", transport=mirror)
    agent.enroll(fleet.token())
    size = rel.manifest.transfers["zstd"].size
    keep = size // 3
    mirror.on(r"/v1/device/blobs/", lambda q, r: httpx.Response(200, headers={"content-length": str(size)},
                                                                stream=CutStream(r.content, keep)))
    assert agent.run_once() == "error"
    part = tmp_path / "dev" / "downloads" / f"{rel.manifest.transfers['zstd'].sha256}.part"
    assert part.stat().st_size == keep  # kept for resumption
    assert json.loads((tmp_path / "dev" / "journal.json").read_text())["update"]["step"] == "download"
    mirror.clear()
    assert agent.run_once() == "switched"
    ranges = [h.get("range") for m, p, h in mirror.log if "/blobs/" in p]
    assert ranges[-1] == f"bytes={keep}-", ranges
    assert check_device(agent.dir)[0] == 1
    agent.close()


def test_server_ignoring_range_restarts_cleanly(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rel = fleet.publish(model_versions[1], 1)
    mirror = HostileTransport()
    agent = make_agent(fleet.url, tmp_path / "dev", transport=mirror)
    agent.enroll(fleet.token())
    sha = rel.manifest.transfers["zstd"].sha256
    part = tmp_path / "dev" / "downloads" / f"{sha}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that is not a prefix")
    # a mirror that ignores Range and answers 200 with the whole body: the agent starts from byte 0
    body = rel.zstd_path.read_bytes()
    mirror.on(r"/v1/device/blobs/", lambda q, r: httpx.Response(
        200, headers={"content-length": str(len(body))}, stream=BodyStream(body)))
    assert agent.run_once() == "switched"
    assert check_device(agent.dir)[0] == 1
    agent.close()


def test_failed_health_check_keeps_the_old_slot(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    device_id = agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    before = device_snapshot(agent.dir)
    # v2 is genuinely signed but is not a model llama.cpp can load (truncated GGUF)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model_versions[2].read_bytes()[: 200_000])
    fleet.publish(broken, 2, architecture="llama", quantization="F32")
    assert agent.run_once() == "health_failed"
    assert device_snapshot(agent.dir) == before
    bad = refusals(fleet, device_id)
    assert bad[0]["kind"] == "health_failed" and bad[0]["reason"].startswith("HealthCheckError")
    assert agent.run_once() == "failed_before"  # not retried
    fleet.publish(model_versions[3], 3)  # a fixed build gets through
    assert agent.run_once() == "switched"
    assert check_device(agent.dir)[0] == 3
    agent.close()


def test_corrupted_active_slot_falls_back_to_the_other(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    fleet.publish(model_versions[2], 2)
    assert agent.run_once() == "switched"
    slots = Slots(agent.dir)
    act = slots.active()
    with open(slots.model_path(act.slot), "r+b") as f:  # bit rot in the active model
        f.seek(1000)
        f.write(b"\xff\xff")
    agent.close()
    fresh = make_agent(fleet.url, tmp_path / "dev")
    recovered = fresh.recover()
    assert recovered.version == 1 and recovered.slot != act.slot
    assert check_device(fresh.dir)[0] == 1
    assert fresh.run_once() == "switched"  # v2 (desired, never older than what ran) is reinstalled
    assert check_device(fresh.dir)[0] == 2
    fresh.close()


def test_root_rotation_reaches_the_device(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    fleet.keyring.rotate("root")
    fleet.keyring.rotate("targets")
    for v in (2, 3):
        fleet.admin.push_root(fleet.keyring.root_bytes(v))
    fleet.publish(model_versions[2], 2)  # signed by the new targets key
    assert agent.run_once() == "switched"
    assert json.loads((agent.dir / "trust" / "root.json").read_text())["signed"]["version"] == 3
    assert check_device(agent.dir)[0] == 2
    agent.close()


def test_desired_version_moving_on_abandons_the_old_attempt(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    agent.close()
    fleet.publish(model_versions[2], 2)
    # an agent process dies right after downloading v2
    paths = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "fleet")]
    code = subprocess.run([sys.executable, "-c", (
        f"import sys; sys.path[:0] = {paths!r}\n"
        "from agent_kit import make_agent\n"
        f"make_agent({fleet.url!r}, __import__('pathlib').Path({str(agent.dir)!r})).run_once()\n")],
        env={**os.environ, CRASH_ENV: "step.download.before_save:1"}, timeout=120).returncode
    assert code == -9
    assert json.loads((agent.dir / "journal.json").read_text())["update"]["version"] == 2
    fleet.publish(model_versions[3], 3)
    again = make_agent(fleet.url, agent.dir)
    assert again.run_once() == "switched"
    assert check_device(agent.dir)[0] == 3
    assert not list((agent.dir / "downloads").iterdir())
    again.close()


def test_update_with_each_database(db_url, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Fleet(tmp_path / "fleet", db_url=db_url) as fleet:
        fleet.publish(model_versions[1], 1)
        agent = make_agent(fleet.url, tmp_path / "dev")
        device_id = agent.enroll(fleet.token())
        assert agent.run_once() == "switched"
        fleet.publish(model_versions[2], 2)
        assert agent.run_once() == "switched"
        assert check_device(agent.dir)[0] == 2
        assert [d["active_version"] for d in fleet.admin.devices() if d["id"] == device_id] == [2]
        agent.close()


def test_atomic_write_and_journal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "state.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two", 0o600)
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o600
    j = Journal(tmp_path / "j.json")
    assert j.load() == {}
    j.save({"update": None, "n": [1, 2]})
    assert j.load() == {"update": None, "n": [1, 2]}


@pytest.mark.parametrize("point", ["journal.partial", "journal.before_replace"])
def test_sigkill_mid_journal_write_keeps_the_old_journal(tmp_path, point: str) -> None:  # type: ignore[no-untyped-def]
    j = Journal(tmp_path / "j.json")
    j.save({"v": 1})
    code = subprocess.run([sys.executable, "-c", (
        "from edgegen.agent.journal import Journal\n"
        f"Journal(__import__('pathlib').Path({str(tmp_path / 'j.json')!r})).save({{'v': 2, 'pad': 'x' * 100000}})\n")],
        env={**os.environ, CRASH_ENV: f"{point}:1"}, timeout=60).returncode
    assert code == -9
    assert j.load() == {"v": 1}  # never torn, never missing
    j.save({"v": 3})  # the stale temp file does not get in the way
    assert j.load() == {"v": 3}
