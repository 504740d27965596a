"""The README's "Fleet in five minutes" runs verbatim: control plane + 2 agents on loopback with
stories260K, ending with both devices answering a chat request on the published model.

The block is read from README.md and run by bash in a scratch directory that links the repository's
``tests`` folder (the block's paths are relative to the repository root); background jobs are
stopped when it ends. Needs port 8700 (the block's default) free."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def quickstart_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Fleet in five minutes", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "no ```sh block in the README's quick start"
    return m.group(1)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_fleet_quickstart_runs_verbatim(tmp_path: Path) -> None:
    if not port_free(8700):
        pytest.fail("port 8700 is taken: the README's quick start uses the control plane's default port")
    block = quickstart_block()
    (tmp_path / "tests").symlink_to(REPO / "tests")
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + block
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("EDGEGEN_HOME", None)
    env.pop("EDGEGEN_FLEET__ADMIN_TOKEN", None)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, (f"quick start failed ({proc.returncode})\n"
                                  f"stdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}")
    answers = [line for line in out.splitlines() if line.startswith("stories@v1: ")]
    assert len(answers) == 2 and all(len(a) > len("stories@v1: ") for a in answers), out
    assert "console: https://127.0.0.1:8700/" in err and "admin_token" in err  # serve says where and how
    # the devices table: both enrolled devices, current on v1, labelled
    devices = out.split("devices", 1)[1]
    assert devices.count("current") >= 2 and "site=lab" in devices, out
    assert (tmp_path / "fleet-demo" / "fleet" / "admin_token").exists()
