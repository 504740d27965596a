"""Loopback end to end with 10 real agents: ``edgegen fleet serve`` and 10 ``edgegen agent run``
processes (own data dirs, real Edge servers, real llama.cpp), telemetry flowing from the Edge
servers' requests through each device spool to the control plane, which evaluates the gates.

    1. a good version walks 10% -> 50% -> 100%
    2. a version that fails its health check stops at the first stage; the canary keeps its model
       and no other device ever receives it
    3. a version that degrades latency (SmolLM2-135M where the fleet runs stories260K: it passes the
       health check but answers an order of magnitude slower) breaches the p95 gate at the first
       stage and its canary goes back automatically (to the signed rollback version carrying the
       previous bytes); no other device ever receives it
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet2_harness import ADMIN, Registry, free_port
from fleet_kit import make_variant

from edgegen.fleet.rollout_client import RolloutClient

N_AGENTS = 10
# latency is judged against the previous version on the same machine at the same time (the test
# machine's load varies a lot), plus a generous absolute bound
GATES = ["update_failure_rate<0@1", "error_rate<0.05@1", "p95_latency_ratio<3@1", "p95_latency_ms<20000@1"]


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("edgegen")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from edgegen.cli import main; main()"]


class Traffic:
    """Users of every device: one thread per device, a chat request, a short pause, again."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs, self.stop = dirs, threading.Event()
        self.sent = self.failed = 0
        self.threads = [threading.Thread(target=self._run, args=(d,), daemon=True) for d in dirs]

    def _run(self, data: Path) -> None:
        with httpx.Client(timeout=60) as http:
            i = 0
            while not self.stop.is_set():
                try:
                    url = json.loads((data / "serve.json").read_text())["url"]
                    r = http.post(url + "/v1/chat/completions", json={
                        "model": "x", "max_tokens": 8, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Tell me a story about a cat, number {i}."}]})
                    self.sent += 1
                    self.failed += r.status_code != 200
                except (OSError, ValueError, KeyError, httpx.HTTPError):
                    pass  # not serving yet, or swapping
                i += 1
                self.stop.wait(0.4)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def wait_for(what: str, pred: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_ten_agents_staged_rollouts(tmp_path: Path, stories_gguf: Path, smollm2_q4_1: Path) -> None:
    t_start = time.monotonic()
    reg = Registry.create(tmp_path)
    port = free_port()
    env = {**os.environ, "EDGEGEN_FLEET__ROLLOUT_INTERVAL_S": "0.5",
           "EDGEGEN_FLEET__TELEMETRY_UPLOAD_INTERVAL_S": "0.5",
           "EDGEGEN_ENGINE__N_CTX": "512", "EDGEGEN_ENGINE__N_THREADS": "1", "EDGEGEN_HOME": str(tmp_path / "home")}
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(_cli() + args, stdout=open(logs / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
                             env=env)
        procs.append(p)
        return p

    spawn("control-plane", ["fleet", "serve", "--data", str(tmp_path / "cp"), "--keys", str(reg.keys.dir),
                            "--admin-token", ADMIN, "--port", str(port), "--insecure"])
    url = f"http://127.0.0.1:{port}"
    client = RolloutClient(url, ADMIN)
    try:
        wait_for("the control plane", lambda: _ok(url), 90)
        variants = tmp_path / "variants"
        variants.mkdir()
        v1 = make_variant(stories_gguf, variants / "v1.gguf", "stories-v01")
        v2 = make_variant(stories_gguf, variants / "v2.gguf", "stories-v02")
        reg.publish_file(client, "stories", 1, v1)
        client.release("stories", 1)
        dirs = [tmp_path / f"agent{i}" for i in range(N_AGENTS)]
        for i, d in enumerate(dirs):
            spawn(f"agent{i}", ["agent", "run", "--data-dir", str(d), "--server", url, "--name", f"edge-{i}",
                                "--enroll-token", client.enroll_token(model="stories", group="fleet"),
                                "--poll-interval", "0.5", "--port", "0", "--max-latency", "120"])

        def versions() -> dict[str, int | None]:
            return {d["id"]: d["active_version"] for d in client.devices()}

        wait_for("10 agents on v1", lambda: list(versions().values()) == [1] * N_AGENTS, 240)
        names = {d["id"]: d["name"] for d in client.devices()}
        t_fleet = time.monotonic() - t_start
        with Traffic(dirs) as traffic:
            # ---- 1. a good version walks 10 -> 50 -> 100 -------------------------------------------
            reg.publish_file(client, "stories", 2, v2)
            r1 = client.start("stories", 2, "fleet", stages="10,50,100", gates=GATES, key=reg.keys.targets_key)
            t0 = time.monotonic()
            walk = []
            done = wait_for("rollout 1 to finish", lambda: _track(client, r1["id"], walk), 240)
            t_good = time.monotonic() - t0
            assert done["state"] == "completed", done["reason"]
            assert walk == [10, 50, 100]
            assert [e["action"] for e in done["events"]] == ["created", "advance", "advance", "complete"]
            assert set(versions().values()) == {2}
            assert r1["rollback_version"] == 3

            # ---- 2. a version that fails its health check -----------------------------------------
            broken = variants / "broken.gguf"
            broken.write_bytes(v2.read_bytes()[: v2.stat().st_size // 3])  # signed, but truncated
            reg.publish_bytes(client, "stories", 4, broken.read_bytes())
            r2 = client.start("stories", 4, "fleet", gates=GATES, key=reg.keys.targets_key)
            t0 = time.monotonic()
            done2 = wait_for("rollout 2 to halt", lambda: _finished(client, r2["id"]), 240)
            t_broken = time.monotonic() - t0
            assert done2["state"] == "halted" and done2["percent"] == 10, done2
            assert "update_failure_rate" in done2["reason"]
            (canary2,) = done2["members"]
            assert set(versions().values()) == {2}  # the canary never switched
            _assert_only_canary_got(client, 4, canary2)

            # ---- 3. a version that degrades latency -----------------------------------------------
            reg.publish_file(client, "stories", 6, smollm2_q4_1, zstd=False)  # 98 MB: skip compressing
            r3 = client.start("stories", 6, "fleet", gates=GATES, key=reg.keys.targets_key)
            t0 = time.monotonic()
            done3 = wait_for("rollout 3 to halt", lambda: _finished(client, r3["id"]), 300)
            assert done3["state"] == "halted" and done3["percent"] == 10, done3
            assert "p95_latency_ratio" in done3["reason"]
            (canary3,) = done3["members"]
            rollback = r3["rollback_version"]
            assert rollback == 7
            wait_for("the canary back on the rollback version", lambda: versions()[canary3] == rollback, 180)
            t_slow = time.monotonic() - t0
            final = versions()
            assert {v for d, v in final.items() if d != canary3} == {2}
            _assert_only_canary_got(client, 6, canary3)
            shas = {v["version"]: v["sha256"] for m in client.models() for v in m["versions"]}
            assert shas[rollback] == shas[2] != shas[6]  # back to the previous bytes
            switched = [e for e in client.events(canary3) if e["kind"] == "switched"]  # newest first
            assert [e["version"] for e in switched][:2] == [rollback, 6]
        streams = client.telemetry_streams()
        assert len(streams) == N_AGENTS and all(s["stored"] > 0 for s in streams)
        print(f"\nten-agent loopback: fleet up on v1 in {t_fleet:.0f}s; good v2 walked {walk} in {t_good:.0f}s; "
              f"health-check failure halted at 10% in {t_broken:.0f}s (canary {names[canary2]}); latency "
              f"regression ({done3['reason']}) halted at 10% and rolled {names[canary3]} back to "
              f"v{rollback} in {t_slow:.0f}s; {traffic.sent} requests ({traffic.failed} failed), "
              f"{sum(s['stored'] for s in streams)} telemetry events stored; total {time.monotonic() - t_start:.0f}s")
    finally:
        client.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _track(client: RolloutClient, rid: int, walk: list[int]) -> dict | None:
    r = client.show(rid)
    if not walk or walk[-1] != r["percent"]:
        walk.append(r["percent"])
    return r if r["state"] != "running" else None


def _finished(client: RolloutClient, rid: int) -> dict | None:
    r = client.show(rid)
    return r if r["state"] != "running" else None


def _assert_only_canary_got(client: RolloutClient, version: int, canary: str) -> None:
    touched = {e["device_id"] for e in client.events(limit=5000) if e["version"] == version
               and e["kind"] in ("downloading", "installed", "health_failed", "switched")}
    assert touched == {canary}, f"v{version} reached {touched}, expected only the canary {canary}"
