"""FedProx and FedAdam through the Deployment Engine (a real SuperLink and three SuperNodes on loopback),
against FedAvg on the same federation: one round each from the same initial factors, with the same
per-device training seeds, so the runs differ only by the strategy.

    FedProx   the server sends ``proximal_mu``; each device's proximal term holds its factors near the
              global ones: its update norm (client drift) falls well below FedAvg's on the same device
    FedAdam   the server applies Adam to the mean update: in round 1 every coordinate moves by about the
              bias-corrected server learning rate in the direction of FedAvg's mean update (Reddi et al.
              2021, arXiv:2003.00295; Flower's ``FedAdam``), not by the mean update itself

No SecAgg+ and no DP (their wiring is tested in ``test_federation_fleet``). About a minute and a half:
Flower's Deployment Engine polls every 3 s."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgegen.learn.config import LearnConfig, StrategyName
from edgegen.learn.deploy import Device, Federation
from edgegen.learn.lora import initial_arrays

DEVICES = ("hamlet", "macbeth", "othello")
MU = 1000.0
ETA = 0.01


def _global(out: Path) -> list[np.ndarray]:
    with np.load(out / "global.npz") as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


@pytest.fixture(scope="module")
def runs(stories_gguf, device_texts, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("strategies")
    base = LearnConfig(model=str(stories_gguf), rounds=1, min_clients=3, local_steps=15, eval_chunks=2,
                       secagg=False, noise_multiplier=0.0, round_timeout=120)
    variants = {"fedavg": {}, "fedprox": {"strategy": StrategyName.FEDPROX, "proximal_mu": MU},
                "fedadam": {"strategy": StrategyName.FEDADAM, "server_lr": ETA}}
    out = {}
    with Federation(root / "fed", [Device(n, device_texts[n]) for n in DEVICES]) as fed:
        for name, kw in variants.items():
            cfg = replace(base, out_dir=str(root / name), **kw)
            result = fed.run(cfg, timeout=300)
            out[name] = {"result": result, "global": _global(root / name)}
    out["initial"] = initial_arrays(stories_gguf, base.lora)
    return out


def _fit(run: dict) -> dict[str, dict]:
    (rnd,) = run["result"]["rounds"]
    return {m["device"]: m for m in rnd["fit"]}


def test_fedprox_proximal_term_reduces_client_drift(runs) -> None:  # type: ignore[no-untyped-def]
    avg, prox = _fit(runs["fedavg"]), _fit(runs["fedprox"])
    assert sorted(avg) == sorted(prox) == sorted(DEVICES)
    for d in DEVICES:
        assert avg[d]["steps"] == prox[d]["steps"] == 15
        assert 0 < prox[d]["update_norm"] < 0.5 * avg[d]["update_norm"], (d, avg[d], prox[d])
    # and the global moved correspondingly less (FedAvg's mean of smaller updates)
    init = runs["initial"]
    step = {k: float(np.sqrt(sum(((g - i) ** 2).sum() for g, i in zip(runs[k]["global"], init))))
            for k in ("fedavg", "fedprox")}
    assert step["fedprox"] < 0.5 * step["fedavg"], step


def test_fedadam_takes_an_adam_step_on_the_server(runs) -> None:  # type: ignore[no-untyped-def]
    from flwr.server.strategy import FedAdam

    defaults = inspect.signature(FedAdam.__init__).parameters
    b1, b2 = defaults["beta_1"].default, defaults["beta_2"].default
    eta_norm = ETA * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)  # round 1, Flower's bias correction
    init = runs["initial"]
    mean_step = np.concatenate([(g - i).ravel() for g, i in zip(runs["fedavg"]["global"], init)])
    adam_step = np.concatenate([(g - i).ravel() for g, i in zip(runs["fedadam"]["global"], init)])
    moved = np.abs(mean_step) > 1e-6  # |m / (sqrt(v) + tau)| is 1 to 1% there (tau = 1e-9)
    assert moved.mean() > 0.9, moved.mean()
    assert np.allclose(np.abs(adam_step[moved]), eta_norm, rtol=0.02), (np.abs(adam_step[moved]).min(), eta_norm)
    assert (np.sign(adam_step[moved]) == np.sign(mean_step[moved])).mean() > 0.999
    assert np.abs(adam_step).max() <= eta_norm * 1.001  # Adam's first step never exceeds its learning rate
    # not FedAvg's step: every coordinate moved by the same magnitude, whatever the mean update's size
    assert np.linalg.norm(adam_step - mean_step) > 0.5 * np.linalg.norm(mean_step)


def test_every_strategy_completed_its_round_on_every_device(runs) -> None:  # type: ignore[no-untyped-def]
    for name in ("fedavg", "fedprox", "fedadam"):
        (rnd,) = runs[name]["result"]["rounds"]
        assert sorted(c["device"] for c in rnd["clients"]) == sorted(DEVICES), name
        assert runs[name]["result"]["config"]["strategy"] == name
