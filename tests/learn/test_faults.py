"""Faults on real SuperNodes (loopback Deployment Engine): a device whose ClientApp dies inside its
training (power lost mid-round) and a device slower than the round timeout; the round completes with
the others and the global adapter still improves their held-out text; the crashed device is back
for the evaluation (its SuperNode starts a fresh ClientApp per message). Plain aggregation path (no
SecAgg+, no DP) so that a robust rule could run; SecAgg+'s own dropout recovery is Flower's.

About two and a half minutes: Flower's Deployment Engine polls every 3 s, and the slow device costs one timeout
per message round."""

from __future__ import annotations

from edgegen.learn.config import LearnConfig
from edgegen.learn.deploy import Device, Federation


def test_a_round_completes_without_a_crashed_and_a_slow_device(stories_gguf, device_texts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    devices = [Device("hamlet", device_texts["hamlet"]), Device("macbeth", device_texts["macbeth"]),
               Device("othello", device_texts["othello"], {"crash-round": 1}),
               Device("lear", device_texts["lear"], {"delay-s": 150.0})]
    cfg = LearnConfig(model=str(stories_gguf), out_dir=str(tmp_path / "out"), rounds=1, min_clients=4,
                      local_steps=20, eval_chunks=4, secagg=False, noise_multiplier=0.0, round_timeout=45)
    with Federation(tmp_path / "fed", devices) as fed:
        result = fed.run(cfg, timeout=300)
    (rnd,) = result["rounds"]
    trained = sorted(m["device"] for m in rnd["fit"])
    assert trained == ["hamlet", "macbeth"], rnd["fit"]
    evaluated = {c["device"]: c for c in rnd["clients"]}
    assert "lear" not in evaluated  # still asleep in its training when evaluation timed out
    assert "othello" in evaluated  # its SuperNode started a fresh ClientApp for the evaluation
    for name in ("hamlet", "macbeth"):
        assert evaluated[name]["ppl"] < evaluated[name]["ppl_base"], evaluated[name]
