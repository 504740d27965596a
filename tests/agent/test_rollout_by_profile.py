"""Rollouts that target devices by the profile they report, or by what the planner says fits them.

Three agents on one control plane: one reports the shipped Raspberry Pi 5 profile, one a hand-written
board with 48 MiB of RAM (less than llama.cpp's own runtime needs), one reports nothing. The version's
signed manifest carries the planner's facts; ``--to fits`` and ``--to profile:NAME`` pick exactly the
devices they should, and say why the others were left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_kit import make_agent
from fleet_kit import ADMIN_TOKEN

from edgegen.errors import FleetError, InvalidRolloutError
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.targeting import Target, match, parse_selector
from edgegen.plan.facts import model_facts
from edgegen.plan.profile import BUILTIN_DIR, profile_json

PI5 = "raspberry-pi-5-8gb"


@pytest.fixture
def tiny_board(tmp_path: Path) -> Path:
    data, _ = profile_json("orangepi-3b-4gb")
    data = {**data, "name": "tiny-board", "ram_bytes": 48 * 2**20, "source": "hand-written for this test"}
    path = tmp_path / "tiny-board.json"
    path.write_text(json.dumps(data))
    return path


def test_selector_terms_pure(model_versions, tiny_board) -> None:  # type: ignore[no-untyped-def]
    facts = model_facts(model_versions[1]).to_dict()
    pi5 = Target("lab", {"region": "eu"}, profile_json(PI5)[0])
    tiny = Target("lab", {"region": "us"}, json.loads(tiny_board.read_text()))
    bare = Target(None, {}, None)
    assert match(parse_selector("fits"), pi5, facts)[0]
    ok, why = match(parse_selector("fits"), tiny, facts)
    assert not ok and "does not fit tiny-board" in why and "RAM" in why
    assert match(parse_selector("fits"), bare, facts) == (False, "reported no device profile")
    assert match(parse_selector(f"profile:{PI5}"), pi5)[0] and not match(parse_selector(f"profile:{PI5}"), tiny)[0]
    assert match(parse_selector("region=eu,fits:4096"), pi5, facts)[0]
    assert not match(parse_selector("region=us,fits"), pi5, facts)[0]
    assert match(parse_selector("lab"), tiny)[0] and not match(parse_selector("lab"), bare)[0]
    assert not match(parse_selector("fits"), pi5, None)[0]  # no facts: nothing is known to fit
    for bad in ("fits:many", "profile:", "fits:0", "a,,b"):
        with pytest.raises(InvalidRolloutError):
            parse_selector(bad)


def test_rollout_targets_devices_by_fit_and_by_profile(fleet, model_versions, tiny_board, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    agents, ids = {}, {}
    for who, profile in (("pi5", PI5), ("tiny", str(tiny_board)), ("bare", None)):
        agent = make_agent(fleet.url, tmp_path / who)
        agent.config.profile = profile
        ids[who] = agent.enroll(fleet.token())
        assert agent.run_once() == "switched"
        agents[who] = agent
    assert agents["pi5"].send_profile() is False  # accepted once; not sent again while unchanged
    shown = {d["id"]: d["profile"] for d in fleet.admin.devices()}
    assert shown == {ids["pi5"]: PI5, ids["tiny"]: "tiny-board", ids["bare"]: None}
    rel2 = fleet.publish(model_versions[2], 2, ship=False)
    assert rel2.manifest.plan is not None and rel2.manifest.plan["engine"] == "llamacpp"
    with RolloutClient(fleet.url, ADMIN_TOKEN) as admin:
        assert admin.plan("stories", "fits", 2)["devices"] == [ids["pi5"]]
        assert admin.plan("stories", "profile:tiny-board", 2)["devices"] == [ids["tiny"]]
        assert admin.plan("stories", "all", 2)["devices"] == sorted(ids.values())
        with pytest.raises(Exception, match="Left out.*(does not fit tiny-board|reported no device profile)"):
            admin.plan("stories", f"fits,profile:{PI5},region=mars", 2)
        admin.start("stories", 2, "fits", stages="100")
    for a in agents.values():
        a.run_once()
    versions = {who: a.slots.active().version for who, a in agents.items()}
    assert versions == {"pi5": 2, "tiny": 1, "bare": 1}
    for a in agents.values():
        a.close()


def test_control_plane_refuses_a_profile_with_missing_fields(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.enroll(fleet.token())
    data = json.loads((BUILTIN_DIR / f"{PI5}.json").read_text())
    del data["ram_bytes"]
    with pytest.raises(FleetError, match="422.*ram_bytes"):
        agent.client().put_profile(data)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    agent.config.profile = str(broken)
    assert agent.run_once() == "switched"  # a bad profile file does not stop updates
    agent.close()
