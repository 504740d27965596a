"""Ten real agents on loopback, over mutual TLS (device certificates issued at enrolment), take a
staged rollout (10% -> 50% -> 100%) of a LoRA adapter for the base model they run; every adapter
version after the first arrives as a delta, and every device ends with base + new adapter verified."""

from __future__ import annotations

from pathlib import Path

from agent_kit import check_device
from test_tls import TlsFleet, make_device

from edgegen.agent.download import sha256_file
from edgegen.fleet.publish import build_release
from edgegen.formats.lora_gguf import random_lora

N_DEVICES = 10


def publish(f: TlsFleet, artifact: Path, name: str, version: int, **kw) -> None:  # type: ignore[no-untyped-def]
    rel = build_release(artifact, name=name, version=version, key=f.keyring.targets_key,
                        work_dir=f.root / "work" / f"{name}{version}", **kw)
    f.admin.publish(rel)


def test_ten_agents_over_mtls_roll_out_an_adapter(stories_gguf, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = TlsFleet(tmp_path / "fleet", mutual=True)
    base_sha = sha256_file(model_versions[1])[0]
    v1 = random_lora(stories_gguf, tmp_path / "tldr1.gguf", rank=4, seed=1, name="tldr")
    v2 = random_lora(stories_gguf, tmp_path / "tldr2.gguf", rank=4, seed=2, name="tldr")
    with f.server:
        publish(f, model_versions[1], "stories", 1)
        f.admin.release("stories", 1)
        agents = []
        for i in range(N_DEVICES):
            a = make_device(f.url, tmp_path / f"dev{i}")
            b = f.admin.enroll_bundle(model="stories", group="lab")
            a.device_id_ = a.enroll(b["token"], b)
            assert (a.dir / "trust" / "device.pem").exists()
            assert a.run_once() == "switched"
            agents.append(a)
        # The fleet moves to the adapter stream: v1 everywhere at once, then v2 by a staged rollout.
        for a in agents:
            f.admin.set_device(a.device_id_, model="tldr")
        publish(f, v1, "tldr", 1, base_sha256=base_sha)
        f.admin.release("tldr", 1)
        assert {a.run_once() for a in agents} == {"switched"}
        publish(f, v2, "tldr", 2, base_sha256=base_sha)
        r = f.admin.start("tldr", 2, "lab", stages="10,50,100", gates=["update_failure_rate<0.5@1"],
                          key=f.keyring.targets_key, on_no_traffic="advance", no_traffic_s=0)
        seen = []
        for _ in range(12):
            show = f.admin.show(r["id"])
            if not seen or seen[-1] != show["percent"]:
                seen.append(show["percent"])
            if show["state"] != "running":
                break
            for a in agents:
                a.run_once()
            f.admin.tick()
        final = f.admin.show(r["id"])
        assert final["state"] == "completed", final
        assert seen[:3] == [10, 50, 100], seen
        for a in agents:
            assert a.run_once() == "current"
            act = a.slots.active()
            assert (act.name, act.version) == ("tldr", 2)
            check_device(a.dir)
            a.close()
    f.admin.close()
    f.app.state.fleet.engine.dispose()

