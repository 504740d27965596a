"""Crash safety: SIGKILL the agent at 30+ points during updates, deterministically chosen (seeded),
and after every restart demand exactly one verified, loadable active model and convergence to the
desired version. Crash points run on full (zstd) transfers; the timer kills and the convergence runs
take deltas; ``test_sigkill_during_delta_and_adapter_installs`` puts every crash point on delta
installs of LoRA adapters, followed as the device's model or as an extra adapter stream served
beside it (multi-LoRA).

Agents run as real processes forked from a ``forkserver`` that has the imports done (a cold Python
start with llama.cpp costs seconds on a loaded CI box). Two kinds of kill:
  * at named crash points (``EDGEGEN_AGENT_CRASH_AT=point:n``: the agent SIGKILLs itself the n-th
    time it reaches ``point``): mid download, mid install, mid health check, mid switch, mid journal
    write, before a report is sent; one update may be crashed up to four times in a row (crashes
    during recovery from the previous crash);
  * by the harness, ``SIGKILL`` after a seeded random delay, wherever the agent happens to be.
The count and the distribution over update phases are printed and asserted.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from agent_kit import agent_child, check_device, make_agent

SEED = 20261123
# crash point -> how many times it may be reached during one update (draw n in 1..max)
POINTS = {
    "update.started": 1, "download.chunk": 10, "step.download.before_save": 1,
    "install.chunk": 4, "install.before_replace": 1, "install.before_manifest": 1,
    "slot_manifest.partial": 1, "slot_manifest.before_replace": 1, "step.install.before_save": 1,
    "health.loaded": 1, "step.health.before_save": 1,
    "switch.before_pointer": 1, "pointer.partial": 1, "pointer.before_replace": 1, "step.switch.before_save": 1,
    "journal.partial": 10, "journal.before_replace": 10, "report.before_send": 2,
}
PHASE = {"update": "download", "download": "download", "step.download": "download", "install": "install",
         "slot_manifest": "install", "step.install": "install", "health": "health", "step.health": "health",
         "switch": "switch", "pointer": "switch", "step.switch": "switch", "journal": "journal",
         "report": "report"}
WEIGHT = {"download.chunk": 5, "install.chunk": 2, "pointer.partial": 2, "journal.partial": 2}
ORDER = ["download", "install", "health", "switch", "report"]  # journal writes happen in every phase
N_POINT_KILLS = 36
N_TIMER_KILLS = 8


def phase(point: str) -> str:
    for prefix in sorted(PHASE, key=len, reverse=True):
        if point.startswith(prefix + "."):
            return PHASE[prefix]
    return "other"


def schedule(rng: random.Random) -> list[list[str]]:
    """Chains of crash specs, one chain per update, in update order (a restart after a crash resumes
    the update, so a later point of the same update is still ahead). Every point appears at least once."""
    names = sorted(POINTS)
    weights = [WEIGHT.get(n, 1) for n in names]
    picks = names + rng.choices(names, weights, k=N_POINT_KILLS - len(names))
    rng.shuffle(picks)
    chains: list[list[str]] = []
    while picks:
        chain = picks[: rng.randint(1, 4)]
        del picks[: len(chain)]
        chain.sort(key=lambda p: ORDER.index(phase(p)) if phase(p) in ORDER else rng.randint(0, 4))
        chains.append([f"{p}:{rng.randint(1, POINTS[p])}" for p in chain])
    return chains


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["agent_kit", "edgegen.agent.agent", "edgegen.agent.health",
                                "edgegen.runtime.engine", "llama_cpp", "zstandard", "httpx"])
    return ctx


def run_agent(ctx, data_dir: Path, url: str, crash: str | None = None, kill_after: float | None = None,
              timeout: float = 120.0, deltas: bool = True, adapters: tuple[str, ...] = ()) -> int:
    p = ctx.Process(target=agent_child, args=(str(data_dir), url, crash, deltas, adapters))
    p.start()
    if kill_after is not None:
        p.join(kill_after)
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        pytest.fail(f"agent did not finish within {timeout}s (crash={crash})")
    return p.exitcode


def test_sigkill_at_random_points_during_updates(fleet, model_versions, tmp_path, forkserver, capsys) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "device"
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, data)
    agent.enroll(fleet.token())
    agent.close()
    assert run_agent(forkserver, data, fleet.url) == 0
    assert check_device(data)[0] == 1

    desired = 1
    kills: Counter[str] = Counter()
    by_phase: Counter[str] = Counter()
    not_reached: list[str] = []
    timer_kills = restarts = 0
    delays = [round(rng.uniform(0.05, 1.2), 3) for _ in range(N_TIMER_KILLS)]
    plan = [("point", chain) for chain in schedule(rng)] + [("timer", delays[i : i + 2])
                                                           for i in range(0, len(delays), 2)]
    for kind, chain in plan:
        desired += 1
        fleet.publish(model_versions[1 + (desired - 1) % 8], desired, architecture="llama", quantization="F32")
        for spec in chain:
            if kind == "point":  # full transfers: every point of a download/decode is reachable
                code = run_agent(forkserver, data, fleet.url, crash=spec, deltas=False)
            else:  # kills at random instants, with deltas on (the control plane offers one per update)
                code = run_agent(forkserver, data, fleet.url, kill_after=float(spec))
            restarts += 1
            if code == -signal.SIGKILL:
                if kind == "point":
                    kills[spec] += 1
                    by_phase[phase(spec.rsplit(":", 1)[0])] += 1
                else:
                    timer_kills += 1
                    by_phase["timer"] += 1
            else:
                assert code == 0, f"agent exited with {code} after {spec}"
                not_reached.append(spec)  # the update completed before reaching the point
            # After every run, killed or not: exactly one verified, loadable active model.
            version, _slot = check_device(data)
            assert version in (desired - 1, desired), (spec, version, desired)
        # A restart without faults converges to the desired version.
        assert run_agent(forkserver, data, fleet.url) == 0
        version, _slot = check_device(data)
        assert version == desired, f"did not converge after {chain}: running v{version}, desired v{desired}"
        journal = json.loads((data / "journal.json").read_text())
        assert journal["update"] is None and not journal["outbox"], "update or reports left pending"

    total = sum(kills.values()) + timer_kills
    summary = {"seed": SEED, "sigkills": total, "at_points": sum(kills.values()), "timer_kills": timer_kills,
               "by_phase": dict(sorted(by_phase.items())), "points": dict(sorted(kills.items())),
               "not_reached": not_reached, "updates": desired - 1, "agent_runs": restarts + len(plan)}
    with capsys.disabled():
        print("\ncrash harness:", json.dumps(summary))
    assert sum(kills.values()) >= 30, summary
    for needed in ("download", "install", "switch", "health", "journal"):
        assert by_phase[needed] >= 1, f"no kill during {needed}: {summary}"
    # The control plane heard every switch despite the crashes.
    switched = {e["version"] for e in fleet.events() if e["kind"] == "switched"}
    assert set(range(2, desired + 1)) <= switched


ADAPTER_POINTS = ["download.chunk:1", "install.chunk:1", "install.before_replace:1", "install.before_manifest:1",
                  "slot_manifest.partial:1", "health.loaded:1", "switch.before_pointer:1", "pointer.partial:1",
                  "step.install.before_save:1", "step.switch.before_save:1", "journal.partial:3",
                  "report.before_send:1"]


def active_adapter(data: Path, extra: bool) -> tuple[str, int] | None:
    """(name, version) of the active adapter: the device's model, or its extra stream ``tldr`` (whose
    active slot must verify, on the base the device runs)."""
    from edgegen.agent.slots import Slots

    if not extra:
        act = json.loads((data / "active.json").read_text())
        return act["name"], act["version"]
    slots = Slots(data / "adapters" / "tldr")
    act = slots.active()
    if act is None:
        return None
    m = slots.verify(act.slot)
    assert m is not None, "the extra stream's active adapter does not verify"
    main = Slots(data)
    assert m.base_sha256 == main.base_of(main.active().slot)[0]
    return act.name, act.version


@pytest.mark.parametrize("extra", [False, True], ids=["model", "extra_stream"])
def test_sigkill_during_delta_and_adapter_installs(fleet, model_versions, stories_gguf, tmp_path, forkserver,  # type: ignore[no-untyped-def]
                                                   capsys, extra) -> None:
    """A LoRA adapter stream on the device's base (followed as its model, or served beside it as an
    extra stream): every adapter version after the first arrives as a delta against the installed
    adapter; SIGKILL at each point of those installs."""
    from edgegen.agent.download import sha256_file
    from edgegen.formats.lora_gguf import random_lora

    rng = random.Random(SEED + 1)
    assert len(ADAPTER_POINTS) // 3 <= 5
    data = tmp_path / "device"
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, data)
    device_id = agent.enroll(fleet.token())
    agent.close()
    assert run_agent(forkserver, data, fleet.url) == 0
    streams = ("tldr",) if extra else ()
    if not extra:
        fleet.admin.set_device(device_id, model="tldr")
    base_sha = sha256_file(model_versions[1])[0]
    # Adapter versions that retrain one layer each (the rest of the file unchanged): a delta is small.
    first = random_lora(stories_gguf, tmp_path / "tldr0.gguf", rank=4, seed=0, name="tldr")
    adapters = [first] + [retrain_one_layer(first, tmp_path / f"tldr{i}.gguf", layer=i - 1, seed=i)
                          for i in range(1, 5)]
    points = ADAPTER_POINTS[:]
    rng.shuffle(points)
    kills = 0
    version = 0
    for chunk in [points[i : i + 3] for i in range(0, len(points), 3)]:
        version += 1
        fleet.publish(adapters[version - 1], version, name="tldr", base_sha256=base_sha)
        for spec in chunk:
            code = run_agent(forkserver, data, fleet.url, crash=spec, adapters=streams)
            kills += code == -signal.SIGKILL
            assert code in (0, -signal.SIGKILL), (spec, code)
            check_device(data)  # one verified active set: base alone (v1) or base + an adapter version
            active_adapter(data, extra)  # and the extra stream's adapter, if any, verifies on that base
        assert run_agent(forkserver, data, fleet.url, adapters=streams) == 0
        assert active_adapter(data, extra) == ("tldr", version)
        check_device(data)
    deltas = [e for e in fleet.events(device_id) if e["kind"] == "switched" and e["detail"].get("encoding") ==
              "zstd-patch"]
    with capsys.disabled():
        print(f"\nadapter crash harness ({'extra stream' if extra else 'model'}):",
              json.dumps({"sigkills": kills, "updates": version, "delta_switches": len(deltas)}))
    assert kills >= 8
    assert deltas, "no adapter update went through a delta"


def retrain_one_layer(src: Path, out: Path, layer: int, seed: int) -> Path:
    """``src`` with the LoRA factors of one layer redrawn (as if only that layer were retrained)."""
    import numpy as np

    from edgegen.formats.gguf_file import open_reader
    from edgegen.formats.lora_gguf import write_lora_gguf

    reader = open_reader(src)
    t = {x.name: np.asarray(x.data, dtype=np.float32).reshape(tuple(reversed(x.shape.tolist())))
         for x in reader.tensors}
    rng = np.random.default_rng(seed)
    pairs = {}
    for name in t:
        if name.endswith(".lora_a"):
            base = name[: -len(".lora_a")]
            a, b = t[name], t[base + ".lora_b"]
            if base.startswith(f"blk.{layer}."):
                a = rng.normal(0.0, a.std(), a.shape).astype(np.float32)
            pairs[base] = (a, b)
    return write_lora_gguf(out, "llama", pairs, alpha=4.0, name="tldr")
