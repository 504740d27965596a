"""``edgegen fleet rollout`` / ``rollouts`` / ``telemetry`` against a real control plane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer

import edgegen.cli as cli
from edgegen.cli import rollout as rollout_cli
from edgegen.fleet.app import create_app
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rollout_cli.register(cli.app)  # until cli/__init__ lists the module (idempotent)
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_rollout_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry.create(tmp_path)
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir))
    app.state.fleet.config.rollout_interval_s = 0  # no background loop: the test ticks explicitly
    server = ThreadServer(app)
    try:
        client = RolloutClient(server.url, ADMIN)
        reg.publish_bytes(client, "smol", 1, b"one" * 50)
        client.release("smol", 1)
        devices = [SimDevice(server.url, client.enroll_token(model="smol", group="g"), f"d{i}") for i in range(4)]
        for d in devices:
            d.sync()
        reg.publish_bytes(client, "smol", 2, b"two" * 50)
        common = ["--server", server.url, "--admin-token", ADMIN]

        code, out, err = run(capsys, "fleet", "rollout", "smol", "2", "--to", "g", "--stages", "25,100",
                             "--gate", "p95_latency_ms<800@2", "--gate", "error_rate<0.1",
                             "--keys", str(reg.keys.dir), *common, "--json")
        assert code == 0, err
        r = json.loads(out)
        assert r["state"] == "running" and r["rollback_version"] == 3 and r["stages"] == [25, 100]
        # --gate replaces the default of its metric only; the other default stays
        assert r["gates"] == ["update_failure_rate<0@1", "error_rate<0.1@1", "p95_latency_ms<800@2"]
        assert "v3 reserved for rollback" in r["rollback_note"]

        code, out, _ = run(capsys, "fleet", "rollouts", "pause", str(r["id"]), "--reason", "lunch", *common, "--json")
        assert code == 0 and json.loads(out)["state"] == "paused"
        code, _, err = run(capsys, "fleet", "rollouts", "pause", str(r["id"]), *common)
        assert code == 2 and "only a running one can pause" in err
        code, out, _ = run(capsys, "fleet", "rollouts", "list", *common)
        assert code == 0 and "paused" in out and "25% of 25,100" in out and "lunch" in out
        code, out, _ = run(capsys, "fleet", "rollouts", "list", *common, "--json")
        assert [x["state"] for x in json.loads(out)] == ["paused"]
        code, out, _ = run(capsys, "fleet", "rollouts", "show", str(r["id"]), *common)
        assert code == 0 and "v3 reserved for rollback" in out and "history" in out
        code, out, _ = run(capsys, "fleet", "rollouts", "abort", str(r["id"]), *common, "--json")
        assert code == 0 and json.loads(out)["state"] == "aborted"

        code, _, err = run(capsys, "fleet", "rollout", "smol", "2", "--to", "g", "--gate", "speed<3",
                           "--no-rollback", *common)
        assert code == 2 and "unknown gate metric" in err

        devices[0].requests(3, 0.2)
        code, out, _ = run(capsys, "fleet", "telemetry", "metrics", *common)
        assert code == 0 and f'edgegen_requests_total{{device="{devices[0].id}",model_version="1"}} 3' in out
        code, out, _ = run(capsys, "fleet", "telemetry", "streams", *common, "--json")
        assert code == 0 and json.loads(out)[0]["stored"] == 3
        code, out, _ = run(capsys, "fleet", "telemetry", "streams", *common)
        assert code == 0 and devices[0].id in out
        client.close()
    finally:
        server.stop()
