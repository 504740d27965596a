"""Sign-flip poisoning on the Deployment Engine (a real SuperLink and four SuperNodes on loopback, one
play each): ``lear``'s ClientApp sends the negation of its honest update (``attack=signflip``, applied by
a client mod after honest training, as an attacker would). One round with the plain mean and one with
the coordinate-wise median, from the same initial factors and the same per-device seeds, so the honest
updates are the same in both runs (checked). With 4 devices the trimmed mean at beta 0.25 is the median
(one value dropped at each end), so it is not run twice.

The clean run (every device honest) is computed, not run: round 1's FedAvg of the devices' honest
factors, which each ClientApp saves before its mods run (``audit-dir``), scored on each device's
held-out text by the same code the ClientApp evaluates with (checked against the mean run's reports).
What the issue asks: with the median, each honest device's held-out perplexity stays within 5% of the
clean run's; with the plain mean it does not. Then, on these same real updates (pure aggregation), a
boosted flip (-10x, -100x) drags the mean without bound while median, trimmed and clipped mean stay
within the honest updates' scale. About two minutes on a quiet machine (Flower polls every 3 s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgegen.learn.config import LearnConfig
from edgegen.learn.deploy import Device, Federation
from edgegen.learn.lora import initial_arrays
from edgegen.learn.robust import RobustRule, aggregate, mean, median, norm

HONEST = ("hamlet", "macbeth", "othello")
ATTACKER = "lear"


def _load(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


@pytest.fixture(scope="module")
def runs(stories_gguf, device_texts, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("poisoning")
    audit = root / "client-audit"
    devices = [Device(n, device_texts[n], {"audit-dir": str(audit)}) for n in HONEST]
    devices.append(Device(ATTACKER, device_texts[ATTACKER], {"audit-dir": str(audit), "attack": "signflip"}))
    base = LearnConfig(model=str(stories_gguf), rounds=1, min_clients=4, local_steps=15, eval_chunks=2,
                       secagg=False, noise_multiplier=0.0, round_timeout=120, trim_beta=0.25)
    out: dict = {"initial": initial_arrays(stories_gguf, base.lora), "cfg": base}
    with Federation(root / "fed", devices) as fed:
        for rule in (RobustRule.NONE, RobustRule.MEDIAN):
            cfg = replace(base, out_dir=str(root / rule.value), robust=rule)
            result = fed.run(cfg, timeout=300)
            out[rule] = {"result": result, "global": _load(root / rule.value / "global.npz")}
            # honest factors of this run (the same every run: same initial factors, same seeds)
            out[rule]["honest"] = {n: _load(audit / f"{n}-round1.npz") for n in (*HONEST, ATTACKER)}
    return out


def _updates(run: dict, init: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    return {n: [f - i for f, i in zip(fs, init)] for n, fs in run["honest"].items()}


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return norm([x - y for x, y in zip(a, b)])


def _reported_ppl(run: dict) -> dict[str, float]:
    (rnd,) = run["result"]["rounds"]
    return {c["device"]: c["ppl"] for c in rnd["clients"]}


def test_honest_updates_are_the_same_in_both_runs(runs) -> None:  # type: ignore[no-untyped-def]
    first = runs[RobustRule.NONE]["honest"]
    for n, fs in runs[RobustRule.MEDIAN]["honest"].items():
        assert _distance(fs, first[n]) < 1e-6 * max(norm(first[n]), 1e-9), n


def test_the_flipped_update_reached_the_server_and_each_rule_applied_to_it(runs) -> None:  # type: ignore[no-untyped-def]
    init = runs["initial"]
    ups = _updates(runs[RobustRule.NONE], init)
    sent = [ups[n] for n in HONEST] + [[-a for a in ups[ATTACKER]]]  # what the server received
    clean = [i + c for i, c in zip(init, mean(list(ups.values())))]
    # the plain mean took the flip: half the attacker's update (2 d_a / 4) away from the clean global
    assert _distance(runs[RobustRule.NONE]["global"], clean) == pytest.approx(0.5 * norm(ups[ATTACKER]), rel=1e-3)
    assert _distance(runs[RobustRule.NONE]["global"], [i + m for i, m in zip(init, mean(sent))]) < 1e-5
    assert _distance(runs[RobustRule.MEDIAN]["global"], [i + m for i, m in zip(init, median(sent))]) < 1e-5


def test_median_keeps_every_honest_device_within_5pc_of_the_clean_run_and_the_mean_does_not(
        runs, stories_gguf, device_texts) -> None:  # type: ignore[no-untyped-def]
    from edgegen.learn.data import local_tokens
    from edgegen.learn.lora import LoraModel, load_base

    cfg, init = runs["cfg"], runs["initial"]
    clean = [i + c for i, c in zip(init, mean(list(_updates(runs[RobustRule.NONE], init).values())))]
    model = LoraModel(load_base(stories_gguf), cfg.lora)
    got_mean, got_median = _reported_ppl(runs[RobustRule.NONE]), _reported_ppl(runs[RobustRule.MEDIAN])
    for n in HONEST:
        held = local_tokens(device_texts[n], stories_gguf).heldout
        ppl = {}
        for name, arrays in (("clean", clean), ("mean", runs[RobustRule.NONE]["global"])):
            model.set_arrays(arrays)
            nll, k = model.nll(held, cfg.seq, cfg.eval_chunks)
            ppl[name] = float(np.exp(nll / k))
        assert ppl["mean"] == pytest.approx(got_mean[n], rel=1e-4)  # the device's own figure, recomputed
        assert abs(got_median[n] / ppl["clean"] - 1) < 0.05, (n, ppl, got_median[n])
        assert got_mean[n] > 1.05 * ppl["clean"], (n, ppl)


def test_a_boosted_flip_drags_the_mean_without_bound_but_not_the_robust_rules(runs) -> None:  # type: ignore[no-untyped-def]
    ups = _updates(runs[RobustRule.NONE], runs["initial"])
    clean = mean(list(ups.values()))
    attack = norm(ups[ATTACKER])
    for boost in (10.0, 100.0):
        sent = [ups[n] for n in HONEST] + [[-boost * a for a in ups[ATTACKER]]]
        assert _distance(mean(sent), clean) > 2 * attack
        for rule in (RobustRule.MEDIAN, RobustRule.TRIMMED_MEAN, RobustRule.CLIPPED_MEAN):
            got = aggregate(sent, rule, clip=1.0, beta=0.25)
            assert _distance(got, clean) < 0.75 * attack, (boost, rule, _distance(got, clean), attack)


def test_every_device_trained_and_evaluated_each_run(runs) -> None:  # type: ignore[no-untyped-def]
    for rule in (RobustRule.NONE, RobustRule.MEDIAN):
        (rnd,) = runs[rule]["result"]["rounds"]
        assert sorted(m["device"] for m in rnd["fit"]) == sorted((*HONEST, ATTACKER)), rule
        assert len(rnd["clients"]) == 4, rule
