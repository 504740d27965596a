"""The loop end to end on loopback: three SuperNodes (real ``flower-supernode`` processes, each with
its own play) and a SuperLink train a LoRA adapter for stories260K under SecAgg+ and DP; the adapter
becomes a GGUF file, is signed, published and rolled out in stages to three real agents, which then
serve base + adapter. A deliberately bad adapter afterwards halts at the canary and is rolled back.

Slow for a unit test (about two minutes): Flower's Deployment Engine polls every 3 s at the
SuperLink and the SuperNodes, and SecAgg+ takes four message round trips per round."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from agent_kit import check_device
from fleet_kit import Fleet
from test_tls import make_device

from edgegen.agent.download import sha256_file
from edgegen.learn.config import LearnConfig
from edgegen.learn.deploy import Device
from edgegen.learn.loop import FleetTarget, learn_start, publish_and_roll
from edgegen.learn.robust import norm

DEVICES = ("hamlet", "macbeth", "othello")


@pytest.fixture(scope="module")
def loop(stories_gguf, model_versions, device_texts, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("learn-loop")
    base = model_versions[1]
    with Fleet(root / "fleet") as f:
        f.publish(base, 1)
        agents = {}
        for name in DEVICES:
            a = make_device(f.url, root / "agents" / name)
            b = f.admin.enroll_bundle(model="stories", group="lab")
            a.device_id_ = a.enroll(b["token"], b)
            assert a.run_once() == "switched"
            f.admin.set_device(a.device_id_, model="stories-tales")
            agents[name] = a
        devices = [Device(n, device_texts[n], {"audit-dir": str(root / "client-audit")}) for n in DEVICES]
        cfg = LearnConfig(model=str(base), rounds=1, min_clients=3, local_steps=20, eval_chunks=4, audit=True,
                          round_timeout=120, noise_multiplier=0.5)
        target = FleetTarget(url=f.url, admin_token="test-admin-token", keys_dir=root / "fleet" / "keys",
                             group="lab", adapter="stories-tales", rollout_timeout_s=120)
        lock = threading.Lock()

        def tick() -> None:
            with lock:
                for a in agents.values():
                    a.run_once()

        report = learn_start(cfg, devices, target, root / "work", tick=tick)
        yield {"report": report, "fleet": f, "agents": agents, "root": root, "cfg": cfg, "target": target,
               "base": base, "tick": tick}
        for a in agents.values():
            a.close()


def test_the_loop_ships_a_better_adapter_that_every_device_serves(loop) -> None:  # type: ignore[no-untyped-def]
    r = loop["report"]
    assert r.state == "completed", r.to_dict()
    assert r.rollout["percents"][:1] == [34] or r.rollout["percents"][0] in (10, 34), r.rollout
    assert len(r.devices) == 3
    for d in r.devices:  # each device's own held-out text, evaluated on the device
        assert d["ppl"] < d["ppl_base"], d
    assert r.conversion["adapter_top1_agreement"] >= 0.9, r.conversion
    assert r.conversion["adapter_effect_mean_abs"] > 10 * r.conversion["adapter_mean_abs_logit_diff"], r.conversion
    for a in loop["agents"].values():
        assert a.run_once() == "current"
        act = a.slots.active()
        assert (act.name, act.version) == ("stories-tales", r.version)
        check_device(a.dir)  # verified manifest, adapter bound to the base, llama.cpp generates with it


def test_dp_epsilon_is_reported(loop) -> None:  # type: ignore[no-untyped-def]
    fed = loop["report"].federated
    assert fed["delta"] == 1e-5
    assert 0 < fed["epsilon"] < float("inf")


def test_secagg_server_never_holds_an_individual_update(loop) -> None:  # type: ignore[no-untyped-def]
    """What the server-side strategy is handed under SecAgg+ is the mean of the clipped updates, never
    one device's update: one result per round (Flower's SecAgg+ workflow unmasks only the sum)."""
    root, cfg = loop["root"], loop["cfg"]
    seen = sorted((root / "work" / "run" / "audit").glob("round1-result*.npz"))
    assert seen, "the strategy was handed nothing"
    server_views = []
    for p in seen:
        with np.load(p) as z:
            server_views.append([z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))])
    clients = []
    for name in DEVICES:
        with np.load(root / "client-audit" / f"{name}-round1.npz") as z:
            clients.append([z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))])
    # round 1 starts from B = 0, so a device's factors are its update; each is clipped to C then averaged
    clipped = [[a * min(1.0, cfg.clipping_norm / norm(u)) for a in u] for u in clients]
    mean = [np.mean([u[i] for u in clipped], axis=0) for i in range(len(clipped[0]))]
    for view in server_views:  # the workflow gives the aggregate to each surviving result slot
        assert norm([v - m for v, m in zip(view, mean)]) < 1e-3 * max(norm(mean), 1e-6) + 1e-4
        for u in clients + clipped:
            assert norm([v - a for v, a in zip(view, u)]) > 0.1 * norm(u)


def test_a_bad_adapter_halts_at_the_canary_and_is_rolled_back(loop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An adapter llama.cpp refuses on the devices' base (built for another model's shapes) passes
    signature and binding checks but fails the canary's install health check: the rollout halts at its
    first stage, the canary goes back to the previous adapter's bytes, no other device receives it."""
    from edgegen.formats.lora_gguf import write_lora_gguf

    rng = np.random.default_rng(0)
    bad = write_lora_gguf(tmp_path / "bad.gguf", "llama",
                          {"blk.0.attn_q.weight": (rng.normal(size=(4, 7)).astype(np.float32),
                                                   rng.normal(size=(9, 4)).astype(np.float32))}, alpha=4.0)
    good_sha = {n: a.slots.active().sha256 for n, a in loop["agents"].items()}
    target = loop["target"]
    roll = publish_and_roll(bad, target, loop["base"], tmp_path, tick=loop["tick"])
    assert roll["state"] == "halted", roll
    assert roll["percents"][-1] < 100, roll
    for _ in range(3):
        loop["tick"]()
    for n, a in loop["agents"].items():
        act = a.slots.active()
        assert act.sha256 == good_sha[n], f"{n} does not run the previous adapter's bytes"
        assert act.version != roll["version"]
        check_device(a.dir)
    assert sha256_file(Path(loop["base"]))[0]  # the base file is intact
