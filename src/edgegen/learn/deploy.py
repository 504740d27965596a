"""Flower's Deployment Engine on one machine: ``flower-superlink`` + one ``flower-supernode`` per device.

    with Federation(work_dir, devices) as fed:      real processes on 127.0.0.1, free ports picked
        result = fed.run(cfg, timeout=...)          ``flwr run`` of our Flower App; returns result.json

What it runs (flwr 1.42): the SuperLink serves its Fleet, Control and Runtime APIs over HTTP on one
``--host``/``--port`` (``--insecure`` on loopback; ``--disable-runtime-dependency-installation``:
the app's dependencies are this environment's, never ``uv sync``-ed at run time). Each SuperNode
connects with ``--superlink 127.0.0.1:PORT``, has its own Runtime API ``--port``, and gets the
device's facts as ``--node-config`` (its text folder, its name, injected faults). ``flwr run APP
local --stream`` submits the app (a FAB built from a generated ``pyproject.toml`` whose components
are ``edgegen.learn.apps:server`` / ``:client`` and whose ``[tool.flwr.app.config]`` is the
``LearnConfig``) and streams its log until the run ends. Every process gets its own ``FLWR_HOME``
under ``work_dir`` and its own process group, so stopping the federation ends its SuperExec and
App processes too; logs are kept in ``work_dir/logs``. On a real fleet the SuperNodes run on the
devices and the SuperLink beside the control plane, with TLS; this wrapper is the loopback shape.
Raises ``FederationError`` when a process does not start or the run ends without a result.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import FederationError
from edgegen.learn.config import LearnConfig

__all__ = ["Device", "Federation", "free_port"]


@dataclass(frozen=True)
class Device:
    name: str
    data_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)  # more --node-config: attack, delay-s, crash-round

    def node_config(self, cache_dir: Path) -> str:
        items = {"device": self.name, "data-dir": str(self.data_dir), "cache-dir": str(cache_dir), **self.extra}
        return " ".join(f"{k}={_toml(v)}" for k, v in items.items())


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exe(name: str) -> str:
    p = Path(sys.executable).with_name(name)
    if not p.exists():
        raise FederationError(f"{name} is not installed next to {sys.executable} (pip install 'edgegen[learn]')")
    return str(p)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"the SuperLink exited ({proc.returncode}): {_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError(f"the SuperLink did not listen on port {port} within {timeout:.0f} s: {_tail(log)}")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class Federation:
    """A SuperLink and one SuperNode per device, as processes on loopback, for one or more runs."""

    def __init__(self, work_dir: Path, devices: list[Device]) -> None:
        if len({d.name for d in devices}) != len(devices):
            raise FederationError("device names must be unique")
        self.work = Path(work_dir)
        self.devices = devices
        self.logs = self.work / "logs"
        self.port = 0
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._runs = 0

    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, FLWR_HOME=str(home), PYTHONUNBUFFERED="1")
        # flower-superlink / -supernode start flower-superexec, flwr-serverapp, flwr-clientapp by name
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        src = str(Path(__file__).resolve().parents[2])  # the edgegen this process runs, first on the path
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
        return env

    def _spawn(self, name: str, argv: list[str], home: Path) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self._env(home),
                                cwd=self.work, start_new_session=True)
        log.close()
        self._procs.append((name, proc))
        return proc

    def __enter__(self) -> Federation:
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        try:
            link = self._spawn("superlink", [_exe("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                             "--port", str(self.port), "--disable-runtime-dependency-installation"],
                               self.work / "superlink")
            _wait_port(self.port, link, self.logs / "superlink.log")
            for d in self.devices:
                home = self.work / "nodes" / d.name
                self._spawn(f"supernode-{d.name}", [
                    _exe("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                    "--port", str(free_port()), "--node-config", d.node_config(home / "cache")], home)
        except BaseException:
            self.close()
            raise
        cli_home = self.work / "cli"
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop_device(self, name: str) -> None:
        """Kill one device's SuperNode (and its App processes) at once: power lost."""
        import psutil

        for n, p in self._procs:
            if n == f"supernode-{name}" and p.poll() is None:
                for c in psutil.Process(p.pid).children(recursive=True):
                    c.kill()
                p.kill()
                p.wait()

    def close(self) -> None:
        """SIGTERM every process we started and its descendants (Flower starts SuperExec in a session
        of its own, so a process group does not reach it), SIGKILL what is left after 5 s."""
        import psutil

        family: list[psutil.Process] = []
        for _, p in self._procs:
            try:
                family += psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for _, p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
        for c in family:
            try:
                c.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=5)
        for c in alive:
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
        for _, p in self._procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()

    def _app_dir(self, cfg: LearnConfig) -> Path:
        self._runs += 1
        app = self.work / f"app{self._runs}"
        app.mkdir(parents=True, exist_ok=True)
        lines = [
            "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
            "[project]", 'name = "edgegen-learn"', 'version = "1.0.0"', 'description = "edgegen federated LoRA"',
            'license = "Apache-2.0"', "dependencies = []", "",
            "[tool.flwr.app]", 'publisher = "edgegen"', "",
            "[tool.flwr.app.components]", 'serverapp = "edgegen.learn.apps:server"',
            'clientapp = "edgegen.learn.apps:client"', "",
            "[tool.flwr.app.config]",
        ]
        lines += [f"{k} = {_toml(v)}" for k, v in cfg.to_run_config().items()]
        (app / "pyproject.toml").write_text("\n".join(lines) + "\n")
        return app

    def run(self, cfg: LearnConfig, *, timeout: float = 1800.0) -> dict[str, Any]:
        """Run ``cfg`` (its ``out_dir`` receives result.json and global.npz) and return the result."""
        cfg.check()
        out = Path(cfg.out_dir)
        (out / "result.json").unlink(missing_ok=True)
        app = self._app_dir(cfg)
        log = self.logs / f"run{self._runs}.log"
        with open(log, "ab") as fh:
            try:
                rc = subprocess.run([_exe("flwr"), "run", str(app), "local", "--stream"], stdout=fh,
                                    stderr=subprocess.STDOUT, env=self._env(self.work / "cli"), cwd=self.work,
                                    timeout=timeout, start_new_session=True).returncode
            except subprocess.TimeoutExpired as exc:
                raise FederationError(f"the run did not finish within {timeout:.0f} s: {_tail(log)}") from exc
        if not (out / "result.json").exists():
            raise FederationError(f"the run ended (flwr run exit {rc}) without a result: {_tail(log)}")
        return json.loads((out / "result.json").read_text())
