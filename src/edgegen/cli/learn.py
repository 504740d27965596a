"""CLI for learning at the edge: ``edgegen learn run`` (a federated run) and ``edgegen learn start``
(the run closed into the fleet: GGUF adapter, signed, published, staged rollout). One JSON report.

    edgegen learn run   --model BASE.gguf --device NAME=TEXT_DIR ... [--rounds N] [--no-secagg] ...
    edgegen learn start --model BASE.gguf --device NAME=TEXT_DIR ... --group G --adapter NAME [--rounds N]
                        [--on-drift]   only if the control plane flags drift for G (else one line, exit 0)

``--device NAME=DIR`` starts one SuperNode for a device whose opted-in text is in DIR (on loopback;
on a fleet each SuperNode runs on its device). SecAgg+ and DP are on unless turned off. Every default
is ``LearnConfig``'s.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgegen.errors import UserInputError

learn_app = typer.Typer(help="Federated LoRA fine-tuning on the devices' own text (Flower).", no_args_is_help=True)

ModelOpt = Annotated[Path, typer.Option("--model", help="base model GGUF (the same file on every device)")]
DeviceOpt = Annotated[list[str], typer.Option("--device", help="NAME=TEXT_DIR, once per device (SuperNode)")]
RoundsOpt = Annotated[int | None, typer.Option("--rounds", help="federated rounds (default 3)")]
StepsOpt = Annotated[int | None, typer.Option("--local-steps", help="local training steps per round (default 20)")]
StrategyOpt = Annotated[str | None, typer.Option("--strategy", help="fedavg | fedprox | fedadam (default fedavg)")]
SecaggOpt = Annotated[bool, typer.Option("--secagg/--no-secagg", help="SecAgg+ secure aggregation (default on)")]
NoiseOpt = Annotated[float | None, typer.Option("--noise-multiplier", help="DP noise / clipping norm; 0 = no DP")]
ClipOpt = Annotated[float | None, typer.Option("--clipping-norm", help="DP clipping norm of a device's update")]
RobustOpt = Annotated[str | None, typer.Option(
    "--robust", help="none | clipped-mean | trimmed-mean | median (needs --no-secagg)")]
WorkOpt = Annotated[Path | None, typer.Option("--work", help="working directory (default: a new temp dir)")]


def _devices(specs: list[str]):  # -> list[Device]
    from edgegen.learn.deploy import Device

    out = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UserInputError(f"--device {spec!r}: expected NAME=TEXT_DIR")
        out.append(Device(name, Path(folder).resolve()))
    if not out:
        raise UserInputError("give at least one --device NAME=TEXT_DIR")
    return out


def _config(model: Path, n: int, rounds: int | None, steps: int | None, strategy: str | None, secagg: bool,
            noise: float | None, clip: float | None, robust: str | None):  # -> LearnConfig
    from edgegen.learn.config import LearnConfig, StrategyName
    from edgegen.learn.robust import RobustRule

    kw: dict = {"model": str(Path(model).resolve()), "min_clients": n, "secagg": secagg}
    for key, value in (("rounds", rounds), ("local_steps", steps), ("noise_multiplier", noise),
                       ("clipping_norm", clip)):
        if value is not None:
            kw[key] = value
    try:
        if strategy is not None:
            kw["strategy"] = StrategyName(strategy)
        if robust is not None:
            kw["robust"] = RobustRule(robust)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    return LearnConfig(**kw).check()


def _work(work: Path | None) -> Path:
    return Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="edgegen-learn-"))


@learn_app.command("run")
def run_cmd(model: ModelOpt, device: DeviceOpt, rounds: RoundsOpt = None, local_steps: StepsOpt = None,
            strategy: StrategyOpt = None, secagg: SecaggOpt = True, noise_multiplier: NoiseOpt = None,
            clipping_norm: ClipOpt = None, robust: RobustOpt = None, work: WorkOpt = None) -> None:
    """A federated run over loopback SuperNodes; prints its result (per-device perplexity, epsilon)."""
    from dataclasses import replace

    from edgegen.learn.deploy import Federation

    devices = _devices(device)
    cfg = _config(model, len(devices), rounds, local_steps, strategy, secagg, noise_multiplier, clipping_norm, robust)
    w = _work(work)
    cfg = replace(cfg, out_dir=str(w / "run"))
    with Federation(w / "federation", devices) as fed:
        result = fed.run(cfg)
    sys.stdout.write(json.dumps(result, indent=1, default=float) + "\n")


@learn_app.command("start")
def start_cmd(model: ModelOpt, device: DeviceOpt,
              group: Annotated[str, typer.Option("--group", help="device group the adapter rolls out to")],
              adapter: Annotated[str, typer.Option("--adapter", help="the adapter stream's name in the registry")],
              rounds: RoundsOpt = None, local_steps: StepsOpt = None, strategy: StrategyOpt = None,
              secagg: SecaggOpt = True, noise_multiplier: NoiseOpt = None, clipping_norm: ClipOpt = None,
              stages: Annotated[str, typer.Option("--stages", help="rollout stages in percent")] = "10,50,100",
              gate: Annotated[list[str] | None, typer.Option("--gate", help="rollout gate METRIC<VALUE[@N]")] = None,
              server: Annotated[str | None, typer.Option("--server", help="control plane URL")] = None,
              admin_token: Annotated[str | None, typer.Option("--admin-token", help="admin API token")] = None,
              keys: Annotated[Path | None, typer.Option("--keys", help="publisher keyring directory")] = None,
              on_drift: Annotated[bool, typer.Option(
                  "--on-drift", help="run only when the group has drift alerts (for a scheduler)")] = False,
              drift_hours: Annotated[float, typer.Option("--drift-hours", help="drift alert window")] = 24.0,
              drift_min_fraction: Annotated[float, typer.Option(
                  "--drift-min-fraction", help="share of the group that must have alerted (0: one device)")] = 0.0,
              work: WorkOpt = None) -> None:
    """Federate, convert to a GGUF adapter, check, sign, publish and roll out; prints one report."""
    from edgegen.cli import fleet as fleet_cli
    from edgegen.cli.rollout import _client
    from edgegen.learn.loop import FleetTarget, learn_start

    devices = _devices(device)
    cfg = _config(model, len(devices), rounds, local_steps, strategy, secagg, noise_multiplier, clipping_norm, None)
    client = _client(server, admin_token)  # resolves the URL, token and TLS context as `fleet rollout` does
    url, token, verify = str(client.http.base_url), client.http.headers["Authorization"].split(" ", 1)[1], None
    if url.lower().startswith("https://"):
        from edgegen.fleet.tls import admin_context

        verify = admin_context(fleet_cli._keys_dir(keys))
    client.close()
    target = FleetTarget(url=url, admin_token=token, keys_dir=fleet_cli._keys_dir(keys), group=group,
                         adapter=adapter, stages=stages, verify=verify, on_drift=on_drift, drift_hours=drift_hours,
                         drift_min_fraction=drift_min_fraction, **({"gates": tuple(gate)} if gate else {}))
    report = learn_start(cfg, devices, target, _work(work))
    if report.state == "no-drift":  # nothing to learn: not a failure (a scheduler calls this periodically)
        sys.stdout.write(report.reason + "\n")
        return
    sys.stdout.write(json.dumps(report.to_dict(), indent=1, default=float) + "\n")
    if report.state != "completed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(learn_app, name="learn")
