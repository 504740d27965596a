"""End to end on loopback, all real processes: ``edgegen fleet serve`` plus five ``edgegen agent run``
processes with their own data dirs. Publish v1 -> all five run v1; publish v2 -> all five run v2;
every device's Edge server answers a chat request, and one device keeps answering while it swaps
from v1 to v2 (no request dropped)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from agent_kit import check_device, sha256
from fleet_kit import ADMIN_TOKEN

from edgegen.agent.serving import free_port
from edgegen.fleet.keys import Keyring
from edgegen.fleet.publish import AdminClient, build_release

N_DEVICES = 5
EDGEGEN = [sys.executable, "-c", "from edgegen.cli import main; main()"]


def wait_for(predicate, timeout: float, what: str, procs=()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"process {p.args[-1]} exited with {p.returncode} while waiting for {what}"
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def chat(url: str) -> dict:
    body = {"model": "stories", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 8,
            "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json=body)
    r.raise_for_status()
    return r.json()


def served_version(data_dir: Path) -> int | None:
    p = data_dir / "active.json"
    return json.loads(p.read_text())["version"] if p.exists() else None


@pytest.fixture
def plane(tmp_path: Path):  # type: ignore[no-untyped-def]
    keys = Keyring.init(tmp_path / "keys")
    port = free_port()
    env = {**os.environ, "EDGEGEN_HOME": str(tmp_path / "home")}
    log = open(tmp_path / "plane.log", "wb")
    proc = subprocess.Popen(
        [*EDGEGEN, "fleet", "serve", "--db", f"sqlite:///{tmp_path / 'plane.db'}", "--data", str(tmp_path / "plane"),
         "--port", str(port), "--keys", str(tmp_path / "keys"), "--admin-token", ADMIN_TOKEN,
         "--insecure"],  # plain HTTP: TLS has its own tests (tests/agent/test_tls.py)
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 90, "the control plane", [proc])
    admin = AdminClient(url, ADMIN_TOKEN)
    yield url, admin, keys, env
    admin.close()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    log.close()


def test_five_devices_follow_published_versions(plane, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, admin, keys, env = plane

    def publish(version: int) -> str:
        rel = build_release(model_versions[version], name="stories", version=version, key=keys.targets_key,
                            work_dir=tmp_path / f"rel{version}")
        admin.publish(rel)
        admin.release("stories", version)  # publishing alone ships nothing
        return rel.manifest.sha256

    sha1 = publish(1)
    devices = [tmp_path / f"device{i}" for i in range(N_DEVICES)]
    procs = []
    for i, d in enumerate(devices):
        log = open(tmp_path / f"agent{i}.log", "wb")
        procs.append(subprocess.Popen(
            [*EDGEGEN, "agent", "run", "--server", url, "--enroll-token", admin.enroll_token(model="stories"),
             "--data-dir", str(d), "--name", f"device{i}", "--poll-interval", "0.5", "--port", "0",
             "--threads", "1", "--max-latency", "120"],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        def all_at(version: int) -> bool:
            reported = [dv["active_version"] for dv in admin.devices()]
            return (len(reported) == N_DEVICES and all(v == version for v in reported)
                    and all(served_version(d) == version and (d / "serve.json").exists() for d in devices))

        t0 = time.monotonic()
        wait_for(lambda: all_at(1), 240, "all devices on v1", procs)
        t_v1 = time.monotonic() - t0
        urls = [json.loads((d / "serve.json").read_text())["url"] for d in devices]
        for d, u in zip(devices, urls):
            assert check_device(d)[0] == 1
            assert sha256(d / "slots" / json.loads((d / "active.json").read_text())["slot"] / "model.gguf") == sha1
            out = chat(u)
            assert out["choices"][0]["message"]["content"].strip(), out
            assert out["model"] == "stories@v1"

        # Keep device 0 busy with chat requests while it swaps v1 -> v2: none may fail.
        stop, results, errors = threading.Event(), [], []

        def hammer() -> None:
            while not stop.is_set():
                try:
                    results.append(chat(urls[0])["model"])
                except Exception as exc:  # noqa: BLE001 - any failure is a dropped request
                    errors.append(repr(exc))

        t = threading.Thread(target=hammer)
        t.start()
        wait_for(lambda: results or errors, 60, "a first answer from device 0")
        sha2 = publish(2)
        t0 = time.monotonic()
        try:
            wait_for(lambda: all_at(2), 240, "all devices on v2", procs)
        finally:
            time.sleep(0.5)
            stop.set()
            t.join(60)
        t_v2 = time.monotonic() - t0
        assert not errors, errors[:3]
        assert results[0] == "stories@v1" and results[-1] == "stories@v2", results
        for d, u in zip(devices, urls):
            assert check_device(d)[0] == 2
            slot = json.loads((d / "active.json").read_text())["slot"]
            assert sha256(d / "slots" / slot / "model.gguf") == sha2
            out = chat(u)
            assert out["choices"][0]["message"]["content"].strip(), out
            assert out["model"] == "stories@v2"
        events = admin.events(limit=1000)
        assert sum(e["kind"] == "switched" for e in events) == 2 * N_DEVICES
        print(f"\nend to end: {N_DEVICES} devices, v1 everywhere in {t_v1:.1f}s (incl. start-up), "
              f"v2 everywhere {t_v2:.1f}s after publishing; {len(results)} chat requests during the swap, "
              f"{len(errors)} failed")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
