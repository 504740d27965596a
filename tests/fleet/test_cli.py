"""The fleet CLI in-process (``edgegen.cli.main``) against a live control plane: keys, publish,
enroll-token, revoke, devices, events; bad input exits 2 with one line."""

from __future__ import annotations

import json
import stat

import pytest
from fleet_kit import ADMIN_TOKEN

from edgegen.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_keys_init_show_rotate(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    keys = str(tmp_path / "keys")
    code, out, _ = run(capsys, "fleet", "keys", "init", "--keys", keys, "--json")
    assert code == 0 and json.loads(out)["root_version"] == 1
    for name in ("root.key", "targets.key"):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    code, _, err = run(capsys, "fleet", "keys", "init", "--keys", keys)
    assert code == 2 and "already holds a keyring" in err
    code, out, _ = run(capsys, "fleet", "keys", "rotate", "--role", "root", "--keys", keys, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["root_version"] == 2
    code, out, _ = run(capsys, "fleet", "keys", "show", "--keys", keys, "--json")
    assert json.loads(out)["root_keyid"] == shown["root_keyid"]
    code, table, _ = run(capsys, "fleet", "keys", "show", "--keys", keys)
    assert code == 0 and shown["root_keyid"] in table and not table.lstrip().startswith("{")
    assert list((tmp_path / "keys" / "retired").glob("root-*.key"))
    code, _, err = run(capsys, "fleet", "keys", "rotate", "--role", "snapshot", "--keys", keys)
    assert code == 2 and "unknown role" in err


def test_publish_enrol_revoke(fleet, model_versions, capsys) -> None:  # type: ignore[no-untyped-def]
    common = ["--server", fleet.url, "--admin-token", ADMIN_TOKEN]
    keys = ["--keys", str(fleet.keyring.dir)]
    code, out, err = run(capsys, "fleet", "publish", str(model_versions[1]), "--name", "stories", *keys, *common)
    assert code == 0, err
    assert "published, not shipped" in out and "v1" in out  # publishing alone ships nothing
    code, out, _ = run(capsys, "fleet", "publish", str(model_versions[2]), "--name", "stories", *keys, *common,
                       "--to", "all", "--now", "--json")
    assert json.loads(out)["version"] == 2  # latest + 1 by default
    assert json.loads(out)["shipped"]["released_version"] == 2
    code, _, err = run(capsys, "fleet", "publish", str(model_versions[3]), "--name", "stories", "--now", *keys, *common)
    assert code == 2 and "--to and --now go together" in err
    code, _, err = run(capsys, "fleet", "publish", str(model_versions[3]), "--name", "stories", "--version", "2",
                       *keys, *common)
    assert code == 2 and "not newer" in err
    code, out, _ = run(capsys, "fleet", "enroll-token", "--model", "stories", "--label", "site=lab", *common)
    token = out.strip()
    assert code == 0 and token.startswith("egt_")
    from agent_kit_bridge import enroll_device

    device_id = enroll_device(fleet.url, token)
    code, out, _ = run(capsys, "fleet", "devices", *common, "--json")
    assert [d["labels"] for d in json.loads(out)] == [{"site": "lab"}]
    code, out, _ = run(capsys, "fleet", "devices", *common)
    assert device_id in out and "site=lab" in out and "should run" in out
    code, out, _ = run(capsys, "fleet", "revoke", device_id, "--reason", "test", *common, "--json")
    assert code == 0 and json.loads(out)["revoked"] is True
    code, out, _ = run(capsys, "fleet", "events", "--device", device_id, *common, "--json")
    assert [e["kind"] for e in json.loads(out)] == ["revoked", "enrolled"]
    code, out, _ = run(capsys, "fleet", "events", "--device", device_id, *common)
    assert "revoked" in out and "enrolled" in out
    code, _, err = run(capsys, "fleet", "enroll-token", "--model", "stories", "--label", "nolabel", *common)
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = run(capsys, "fleet", "devices", "--server", fleet.url, "--admin-token", "wrong")
    assert code == 2 and "wrong admin token" in err and "required" not in err


def test_agent_cli_needs_enrolment_and_reports_status(fleet, model_versions, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = str(tmp_path / "device")
    code, _, err = run(capsys, "agent", "run", "--data-dir", data, "--no-serve", "--once")
    assert code == 2 and "no device credential" in err
    fleet.publish(model_versions[1], 1)
    code, _, err = run(capsys, "agent", "run", "--data-dir", data, "--server", fleet.url, "--enroll-token",
                       fleet.token(), "--no-serve", "--no-telemetry", "--until-current", "--poll-interval", "0.1")
    assert code == 0, err
    code, out, _ = run(capsys, "agent", "status", "--data-dir", data, "--json")
    status = json.loads(out)
    assert status["active"]["version"] == 1 and status["status"]["outcome"] == "current"
