"""Deltas are made when a version is published, from the versions devices run; a device's request
never waits for one to be made (a pair nobody prepared gets the full transfer at once, and a delta
for the devices after it)."""

from __future__ import annotations

from agent_kit import make_agent

from edgegen.agent.download import sha256_file
from edgegen.delta import ENCODING
from edgegen.fleet.registry import get_version


def publish(fleet, path, version: int, ship: bool = True) -> dict:  # type: ignore[no-untyped-def]
    rel = fleet.release(path, version)
    answer = fleet.admin.publish(rel)
    if ship:
        fleet.admin.release("stories", version)
    return answer


def test_delta_made_at_publish_for_the_running_version(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert publish(fleet, model_versions[1], 1)["deltas"] == []  # nothing runs yet: nothing to diff
    agent = make_agent(fleet.url, tmp_path / "dev")
    agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    deltas = fleet.plane.deltas
    assert deltas.built == 0
    answer = publish(fleet, model_versions[2], 2)
    v1 = sha256_file(model_versions[1])[0]
    assert [d["base_sha256"] for d in answer["deltas"]] == [v1]
    assert answer["deltas"][0]["sha256"] is not None and answer["deltas"][0]["size"] < answer["deltas"][0]["full"]
    assert deltas.built == 1
    assert agent.run_once() == "switched"
    switched = [e for e in fleet.events() if e["kind"] == "switched" and e["version"] == 2][0]
    assert switched["detail"]["encoding"] == ENCODING
    assert switched["detail"]["transfer_bytes"] == answer["deltas"][0]["size"]
    assert deltas.built == 1, "the device's request made a delta"
    agent.close()


def test_a_delta_nobody_prepared_is_not_made_on_the_request(fleet, model_versions) -> None:  # type: ignore[no-untyped-def]
    for v in (1, 2, 3):
        publish(fleet, model_versions[v], v, ship=False)  # each from the previous version only
    deltas = fleet.plane.deltas
    assert deltas.built == 2
    v1 = sha256_file(model_versions[1])[0]
    with fleet.plane.sessions() as session:
        v3 = get_version(session, "stories", 3)
        assert deltas.offer(session, v3, v1) is None  # at once: take the full transfer
        deltas.join()  # made in the background, for the devices after this one
        offer = deltas.offer(session, v3, v1)
    assert offer is not None and offer["base_sha256"] == v1 and offer["encoding"] == ENCODING
    assert deltas.built == 3
