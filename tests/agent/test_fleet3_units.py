"""Pure pieces of Fleet III, without a network: update-step transitions, deltas (round trip, bombs,
garbage), sealed files (wrong key, truncation, reordering) and the desired-state checks."""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone

import pytest

from edgegen.agent.steps import Event, Step, next_step
from edgegen.agent.trust import TrustedState
from edgegen.delta import apply_delta, make_delta
from edgegen.errors import (
    BindingError,
    FleetError,
    FreezeError,
    HashMismatchError,
    OversizeError,
    RollbackError,
    SignatureError,
)
from edgegen.fleet.keys import Keyring
from edgegen.fleet.signing import DesiredState, SigningKey, canonical_json, sign
from edgegen.sealed import CHUNK, SealedDataError, SealedWriter, read_plain


def test_update_steps_walk_forward_and_back_one_step() -> None:
    walk = [Step.DOWNLOAD]
    while walk[-1] is not Step.REPORT:
        walk.append(next_step(walk[-1], Event.DONE))
    assert walk == [Step.DOWNLOAD, Step.INSTALL, Step.HEALTH, Step.SWITCH, Step.REPORT]
    assert next_step(Step.INSTALL, Event.INPUT_MISSING) is Step.DOWNLOAD
    assert next_step(Step.HEALTH, Event.INPUT_MISSING) is Step.INSTALL
    assert next_step("install", "done") is Step.HEALTH  # journal spelling
    for bad in [(Step.REPORT, Event.DONE), (Step.DOWNLOAD, Event.INPUT_MISSING), ("bogus", Event.DONE)]:
        with pytest.raises(FleetError):
            next_step(*bad)


def test_delta_round_trip_bomb_and_garbage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = os.urandom(300_000)
    new = old[:100_000] + os.urandom(5_000) + old[100_000:]
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    size = make_delta(tmp_path / "old", tmp_path / "new", tmp_path / "d")
    assert size < 20_000  # the shared 300 kB come from the prefix
    out = io.BytesIO()
    assert apply_delta(tmp_path / "old", tmp_path / "d", out, len(new)) == len(new) and out.getvalue() == new
    with pytest.raises(OversizeError):
        apply_delta(tmp_path / "old", tmp_path / "d", io.BytesIO(), len(new) - 1)
    (tmp_path / "junk").write_bytes(os.urandom(2000))
    with pytest.raises(HashMismatchError):
        apply_delta(tmp_path / "old", tmp_path / "junk", io.BytesIO(), len(new))
    (tmp_path / "cut").write_bytes((tmp_path / "d").read_bytes()[: size // 2])
    with pytest.raises(HashMismatchError):
        apply_delta(tmp_path / "old", tmp_path / "cut", io.BytesIO(), len(new))


def test_sealed_files_refuse_wrong_key_truncation_and_reordering(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = os.urandom(32)
    data = os.urandom(2 * CHUNK + 100)
    with SealedWriter(tmp_path / "f", key) as w:
        w.write(data)
    assert read_plain(tmp_path / "f", key) == data
    raw = (tmp_path / "f").read_bytes()
    head, body = raw[:14], raw[14:]
    block = CHUNK + 16
    chunks = [body[i : i + block] for i in range(0, len(body), block)]
    variants = {
        "wrong key": (raw, os.urandom(32)),
        "truncated at a chunk boundary": (head + b"".join(chunks[:2]), key),
        "chunks swapped": (head + chunks[1] + chunks[0] + chunks[2], key),
        "one bit flipped": (raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:], key),
    }
    for what, (blob, k) in variants.items():
        (tmp_path / "g").write_bytes(blob)
        with pytest.raises(SealedDataError):
            read_plain(tmp_path / "g", k)
            pytest.fail(what)


def test_desired_state_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ring = Keyring.init(tmp_path / "keys")
    trust = TrustedState.from_trusted_root(ring.root_bytes())
    assert trust.requires_freshness
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)

    def statement(key: SigningKey, device: str = "dev_1", issued: datetime = now, version: int | None = 3) -> bytes:
        st = DesiredState(device=device, model="m", version=version, issued=issued,
                          expires=issued + timedelta(minutes=5))
        return canonical_json(sign(st.to_signed(), [key]))

    ok = trust.verify_desired(statement(ring.freshness_key), device="dev_1", now=now, newest_issued=None)
    assert (ok.model, ok.version) == ("m", 3)
    cases = [
        (statement(ring.freshness_key), dict(now=now + timedelta(minutes=6)), FreezeError),
        (statement(ring.freshness_key, device="dev_2"), {}, BindingError),
        (statement(ring.freshness_key), dict(newest_issued=now + timedelta(seconds=1)), RollbackError),
        (statement(ring.targets_key), {}, SignatureError),  # the targets key holds no freshness role
    ]
    for data, kw, err in cases:
        with pytest.raises(err):
            trust.verify_desired(data, **{"device": "dev_1", "now": now, "newest_issued": None, **kw})
