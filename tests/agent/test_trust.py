"""The pure trust logic (agent/trust.py + fleet/signing.py): every rule, and its decision table under
hypothesis. No I/O, no clock: ``now`` is an argument everywhere."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.agent.trust import (
    TrustedState,
    TrustLimits,
    check_artifact,
    check_received,
    download_budget,
)
from edgegen.errors import (
    BindingError,
    FreezeError,
    HashMismatchError,
    OversizeError,
    RollbackError,
    SignatureError,
    TrustError,
)
from edgegen.fleet.signing import (
    Manifest,
    MetadataFormatError,
    RootMeta,
    SigningKey,
    Transfer,
    canonical_json,
    sign,
)

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
# Keys are expensive-ish to make; a fixed pool keeps hypothesis fast.
KEYS = [SigningKey.generate() for _ in range(6)]
ROOT, TARGETS, ROOT2, TARGETS2, ATTACKER, SPARE = KEYS


def root_bytes(version: int, root_keys, targets_keys, signers, *, expires=NOW + timedelta(days=365),
               root_threshold: int = 1) -> bytes:
    signed = RootMeta.make_signed(version, expires, [k.public for k in root_keys],
                                  [k.public for k in targets_keys], root_threshold=root_threshold)
    return canonical_json(sign(signed, signers))


def manifest(version: int = 2, *, name: str = "m", size: int = 100, sha: str = "a" * 64,
             expires: datetime = NOW + timedelta(days=30)) -> Manifest:
    return Manifest(name=name, version=version, sha256=sha, size=size, architecture="llama",
                    quantization="F32", created=NOW - timedelta(days=1), expires=expires,
                    transfers={"zstd": Transfer("b" * 64, 80)})


def signed_manifest(m: Manifest, signers=(TARGETS,)) -> bytes:
    return canonical_json(sign(m.to_signed(), list(signers)))


@pytest.fixture
def state() -> TrustedState:
    return TrustedState.from_trusted_root(root_bytes(1, [ROOT], [TARGETS], [ROOT]))


# ---- canonical JSON and keys ---------------------------------------------------------------------


def test_canonical_json_is_order_independent_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == canonical_json({"a": [1, "é"], "b": 1})
    assert canonical_json({"a": 1, "b": 2}) == b'{"a":1,"b":2}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_key_files_are_private_and_reload(tmp_path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k.key")
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(tmp_path / "k.key").keyid == key.keyid
    with pytest.raises(FileExistsError):
        key.save(tmp_path / "k.key")  # never overwrites a key


# ---- root: bootstrap, rotation, freshness ---------------------------------------------------------


def test_bootstrap_starts_at_the_pinned_root_and_walks_the_chain() -> None:
    chain = [root_bytes(1, [ROOT], [TARGETS], [ROOT]),
             root_bytes(2, [ROOT2], [TARGETS], [ROOT, ROOT2]),
             root_bytes(3, [ROOT2], [TARGETS2], [ROOT2])]
    assert TrustedState.bootstrap(chain, ROOT.keyid).root.version == 3
    assert TrustedState.bootstrap(chain, ROOT2.keyid).root.version == 3  # pinned at v2, walks to v3
    assert TrustedState.bootstrap(chain, None).root.version == 3  # trust on first use


def test_bootstrap_refuses_a_chain_without_the_pinned_key() -> None:
    chain = [root_bytes(1, [ATTACKER], [ATTACKER], [ATTACKER])]
    with pytest.raises(TrustError, match="pinned key"):
        TrustedState.bootstrap(chain, ROOT.keyid)
    with pytest.raises(TrustError):
        TrustedState.bootstrap([], ROOT.keyid)


def test_bootstrap_refuses_a_root_not_signed_by_its_own_key() -> None:
    chain = [root_bytes(1, [ROOT], [TARGETS], [ATTACKER])]
    with pytest.raises(SignatureError):
        TrustedState.bootstrap(chain, ROOT.keyid)


def test_bootstrap_refuses_misnumbered_chain() -> None:
    chain = [root_bytes(2, [ROOT], [TARGETS], [ROOT])]
    with pytest.raises(MetadataFormatError):
        TrustedState.bootstrap(chain, ROOT.keyid)


@pytest.mark.parametrize(
    ("signers", "error"),
    [
        ([ROOT, ROOT2], None),  # old and new root: a valid rotation
        ([ROOT2], SignatureError),  # the new key alone cannot take over
        ([ROOT], SignatureError),  # the old key alone cannot install a key that did not sign
        ([ATTACKER], SignatureError),
        ([], SignatureError),
    ],
)
def test_root_rotation_needs_old_and_new_root(state: TrustedState, signers, error) -> None:
    data = root_bytes(2, [ROOT2], [TARGETS], signers)
    if error is None:
        assert state.update_root(data).version == 2
        assert state.root_bytes == data
    else:
        with pytest.raises(error):
            state.update_root(data)
        assert state.root.version == 1  # unchanged on refusal


@pytest.mark.parametrize("version", [1, 3, 0])
def test_root_versions_only_step_by_one(state: TrustedState, version: int) -> None:
    with pytest.raises((RollbackError, MetadataFormatError)):
        state.update_root(root_bytes(version, [ROOT], [TARGETS], [ROOT]))


def test_root_threshold_two_needs_two_distinct_signatures() -> None:
    st2 = TrustedState.from_trusted_root(root_bytes(1, [ROOT, SPARE], [TARGETS], [ROOT, SPARE], root_threshold=2))
    one = root_bytes(2, [ROOT, SPARE], [TARGETS], [ROOT], root_threshold=2)
    env = json.loads(one)
    env["signatures"] = env["signatures"] * 2  # the same signature twice counts once
    with pytest.raises(SignatureError, match="needs 2"):
        st2.update_root(canonical_json(env))
    assert st2.update_root(root_bytes(2, [ROOT, SPARE], [TARGETS], [ROOT, SPARE], root_threshold=2)).version == 2


def test_expired_root_freezes_updates(state: TrustedState) -> None:
    stale = TrustedState.from_trusted_root(root_bytes(1, [ROOT], [TARGETS], [ROOT], expires=NOW - timedelta(1)))
    with pytest.raises(FreezeError, match="root"):
        stale.verify_manifest(signed_manifest(manifest()), name="m", now=NOW, active_version=1)
    state.check_root_fresh(NOW)


def test_oversize_root_is_refused(state: TrustedState) -> None:
    small = TrustedState(state.root, state.root_bytes, TrustLimits(max_metadata_bytes=100))
    with pytest.raises(OversizeError):
        small.update_root(root_bytes(2, [ROOT], [TARGETS], [ROOT]))


# ---- manifests ------------------------------------------------------------------------------------


def test_valid_manifest_is_accepted(state: TrustedState) -> None:
    m = state.verify_manifest(signed_manifest(manifest(2)), name="m", now=NOW, active_version=1, expected_version=2)
    assert m == manifest(2)


def test_bad_signature(state: TrustedState) -> None:
    env = json.loads(signed_manifest(manifest()))
    sig = bytearray(bytes.fromhex(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = sig.hex()
    with pytest.raises(SignatureError, match="0 valid"):
        state.verify_manifest(canonical_json(env), name="m", now=NOW, active_version=1)


def test_unknown_key_signature(state: TrustedState) -> None:
    with pytest.raises(SignatureError, match="not signed by any trusted key"):
        state.verify_manifest(signed_manifest(manifest(), [ATTACKER]), name="m", now=NOW, active_version=1)


def test_root_key_is_not_a_targets_key(state: TrustedState) -> None:
    with pytest.raises(SignatureError):
        state.verify_manifest(signed_manifest(manifest(), [ROOT]), name="m", now=NOW, active_version=1)


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["name", "version", "sha256", "size", "architecture", "quantization",
                              "expires", "transfers"]),
       salt=st.integers(min_value=1, max_value=10**6))
def test_any_change_to_signed_fields_breaks_the_signature(field: str, salt: int) -> None:
    state = TrustedState.from_trusted_root(root_bytes(1, [ROOT], [TARGETS], [ROOT]))
    env = json.loads(signed_manifest(manifest()))
    s = env["signed"]
    s[field] = {"name": f"m{salt}", "version": 2 + salt, "sha256": f"{salt:064x}", "size": 100 + salt,
                "architecture": f"x{salt}", "quantization": f"q{salt}",
                "expires": "2031-01-01T00:00:00Z", "transfers": {"zstd": {"sha256": "c" * 64, "size": salt}}}[field]
    with pytest.raises(SignatureError):
        state.verify_manifest(canonical_json(env), name=s["name"], now=NOW, active_version=None)


def test_mix_and_match_name_and_version_binding(state: TrustedState) -> None:
    with pytest.raises(BindingError, match="model"):
        state.verify_manifest(signed_manifest(manifest(name="other")), name="m", now=NOW, active_version=1)
    with pytest.raises(BindingError, match="announced 3"):
        state.verify_manifest(signed_manifest(manifest(2)), name="m", now=NOW, active_version=1, expected_version=3)


def test_rollback_attack(state: TrustedState) -> None:
    for v in (1, 2):
        with pytest.raises(RollbackError):
            state.verify_manifest(signed_manifest(manifest(v)), name="m", now=NOW, active_version=2)


def test_high_water_mark_allows_reinstall_but_not_older(state: TrustedState) -> None:
    # a device that fell back to v1 after its v3 slot rotted may reinstall v3, never v2
    state.verify_manifest(signed_manifest(manifest(3)), name="m", now=NOW, active_version=1, min_version=3)
    with pytest.raises(RollbackError, match="already ran"):
        state.verify_manifest(signed_manifest(manifest(2)), name="m", now=NOW, active_version=1, min_version=3)


def test_freeze_attack(state: TrustedState) -> None:
    data = signed_manifest(manifest(expires=NOW))
    with pytest.raises(FreezeError):
        state.verify_manifest(data, name="m", now=NOW, active_version=1)
    state.verify_manifest(data, name="m", now=NOW - timedelta(seconds=1), active_version=1)


def test_oversize_download_limits(state: TrustedState) -> None:
    small = TrustedState(state.root, state.root_bytes, TrustLimits(max_artifact_bytes=99))
    with pytest.raises(OversizeError):
        small.verify_manifest(signed_manifest(manifest(size=100)), name="m", now=NOW, active_version=1)
    tiny = TrustedState(state.root, state.root_bytes, TrustLimits(max_metadata_bytes=64))
    with pytest.raises(OversizeError):
        tiny.verify_manifest(signed_manifest(manifest()), name="m", now=NOW, active_version=1)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"signed": {}, "signatures": []}',
                                  canonical_json(sign({"_type": "root"}, [TARGETS]))])
def test_malformed_manifests(state: TrustedState, data: bytes) -> None:
    with pytest.raises(MetadataFormatError):
        state.verify_manifest(data, name="m", now=NOW, active_version=None)


def test_targets_rotation_retires_the_old_key(state: TrustedState) -> None:
    state.update_root(root_bytes(2, [ROOT], [TARGETS2], [ROOT]))
    with pytest.raises(SignatureError):
        state.verify_manifest(signed_manifest(manifest(), [TARGETS]), name="m", now=NOW, active_version=1)
    state.verify_manifest(signed_manifest(manifest(), [TARGETS2]), name="m", now=NOW, active_version=1)


@settings(max_examples=200, deadline=None)
@given(version=st.integers(1, 20), active=st.one_of(st.none(), st.integers(1, 20)),
       announced=st.one_of(st.none(), st.integers(1, 20)), age_h=st.integers(-48, 48),
       signer=st.sampled_from(["targets", "attacker", "root"]), same_name=st.booleans(),
       high=st.one_of(st.none(), st.integers(1, 20)))
def test_decision_table(version, active, announced, age_h, signer, same_name, high) -> None:
    """Exactly one verdict per input, in a fixed order: signature, binding, rollback, freeze."""
    state = TrustedState.from_trusted_root(root_bytes(1, [ROOT], [TARGETS], [ROOT]))
    now = NOW + timedelta(hours=age_h)
    m = manifest(version, name="m" if same_name else "n", expires=NOW)
    key = {"targets": TARGETS, "attacker": ATTACKER, "root": ROOT}[signer]
    if signer != "targets":
        expected = SignatureError
    elif not same_name or (announced is not None and announced != version):
        expected = BindingError
    elif (active is not None and version <= active) or (high is not None and version < high):
        expected = RollbackError
    elif now >= m.expires:
        expected = FreezeError
    else:
        expected = None
    call = lambda: state.verify_manifest(signed_manifest(m, [key]), name="m", now=now,  # noqa: E731
                                         active_version=active, expected_version=announced, min_version=high)
    if expected is None:
        assert call() == m
    else:
        with pytest.raises(expected):
            call()


# ---- artifacts ------------------------------------------------------------------------------------


def test_tampered_artifact() -> None:
    m = manifest()
    check_artifact(m, m.sha256, m.size)
    with pytest.raises(HashMismatchError, match="sha256"):
        check_artifact(m, "c" * 64, m.size)
    with pytest.raises(HashMismatchError, match="bytes"):
        check_artifact(m, m.sha256, m.size - 1)
    with pytest.raises(OversizeError):
        check_artifact(m, m.sha256, m.size + 1)


@given(size=st.integers(0, 10**9), got=st.integers(0, 10**9))
def test_received_size_rules(size: int, got: int) -> None:
    if got == size:
        check_received("x", "a" * 64, size, "a" * 64, got)
    else:
        with pytest.raises(OversizeError if got > size else HashMismatchError):
            check_received("x", "a" * 64, size, "a" * 64, got)


def test_download_budget_follows_the_signed_transfer() -> None:
    m = manifest()
    assert download_budget(m, "zstd") == (80, "b" * 64)
    assert download_budget(m, None) == (100, "a" * 64)
    with pytest.raises(BindingError):
        download_budget(m, "gzip")
