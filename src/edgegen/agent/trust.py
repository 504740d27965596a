"""What a device trusts and what may follow what: the pure core of the update logic.

Modelled on python-tuf's ``TrustedMetadataSet``: values in, values or errors out, no I/O and no
clock (``now`` is an argument). The I/O shell (``agent.py``) fetches bytes and asks this module.

    TrustedState.bootstrap(chain, pin)    first trust: the root whose root role contains the pinned
                                          key id (given with the enrolment token), self-signed,
                                          then every later root in the chain
    state.update_root(bytes)              root rotation: v(n+1) signed by the old root and itself
    state.verify_manifest(bytes, ...)     signature by the trusted ``targets`` role (bad signature,
                                          unknown key), binding to the model and the version the
                                          control plane announced (mix and match), strictly newer
                                          than the version running (rollback), not expired (freeze)
    state.verify_desired(bytes, ...)      the signed desired-state statement: signed by the
                                          ``freshness`` role, for this device, not older than the
                                          newest one seen (replay), not expired (freeze)
    check_adapter_base(manifest, sha)     an adapter only onto the base model it names (wrong base)
    delta_budget(manifest, offer)         an offered delta must be smaller than the full transfer
    download_budget(manifest, enc, lim)   how many bytes a download may take (endless data)
    check_artifact(manifest, sha, size)   the bytes are the ones the manifest names (tampering)

Every refusal is a ``TrustError`` subclass whose message says why; the shell reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from edgegen.errors import (
    BindingError,
    FreezeError,
    HashMismatchError,
    OversizeError,
    RollbackError,
    TrustError,
)
from edgegen.fleet.signing import (
    DesiredState,
    Manifest,
    MetadataFormatError,
    RootMeta,
    check_root_successor,
    load_envelope,
    require_threshold,
    verify_root,
)


@dataclass(frozen=True)
class TrustLimits:
    """Safety limits, as configuration (python-tuf's ``UpdaterConfig``)."""

    max_metadata_bytes: int = 256 * 1024
    max_artifact_bytes: int = 8 * 1024**3
    max_root_rotations: int = 64


class TrustedState:
    """The trusted root. Only ever moves forward; never reads or writes anything itself."""

    def __init__(self, root: RootMeta, root_bytes: bytes, limits: TrustLimits = TrustLimits()) -> None:
        self.root = root
        self.root_bytes = root_bytes  # the exact bytes to persist
        self.limits = limits

    # ---- root ----------------------------------------------------------------------------------

    @classmethod
    def from_trusted_root(cls, data: bytes, limits: TrustLimits = TrustLimits()) -> TrustedState:
        """Reload the root this device already trusts (its own disk): it must still be self-signed."""
        _check_size(data, limits.max_metadata_bytes, "root metadata")
        return cls(verify_root(load_envelope(data, "root")), data, limits)

    @classmethod
    def bootstrap(
        cls, chain: Sequence[bytes], pinned_keyid: str | None, limits: TrustLimits = TrustLimits()
    ) -> TrustedState:
        """First trust at enrolment: start at the first root whose root role holds the pinned key.

        Without a pin (``None``) the first root of the chain is trusted on first use.
        """
        if not chain:
            raise TrustError("no root metadata offered at enrolment")
        if len(chain) > limits.max_root_rotations + 1:
            raise TrustError(f"root chain longer than {limits.max_root_rotations} rotations")
        start = None
        for i, data in enumerate(chain):
            _check_size(data, limits.max_metadata_bytes, "root metadata")
            signed = load_envelope(data, "root")["signed"]
            root = RootMeta.from_signed(signed)
            if root.version != i + 1:
                raise MetadataFormatError(f"root chain position {i + 1} holds version {root.version}")
            if pinned_keyid is None or pinned_keyid in root.roles["root"].keyids:
                start = i
                break
        if start is None:
            raise TrustError(f"no root in the chain is signed by the pinned key {pinned_keyid[:16]}...")
        state = cls.from_trusted_root(chain[start], limits)
        for data in chain[start + 1:]:
            state.update_root(data)
        return state

    def update_root(self, data: bytes) -> RootMeta:
        _check_size(data, self.limits.max_metadata_bytes, "root metadata")
        self.root = check_root_successor(self.root, load_envelope(data, "root"))
        self.root_bytes = data
        return self.root

    def check_root_fresh(self, now: datetime) -> None:
        if now >= self.root.expires:
            raise FreezeError(f"trusted root v{self.root.version} expired at {self.root.expires:%Y-%m-%d %H:%M}Z")

    # ---- manifests -----------------------------------------------------------------------------

    def verify_signed_manifest(self, data: bytes) -> Manifest:
        """Signature and structure only (used to re-check a slot installed earlier)."""
        _check_size(data, self.limits.max_metadata_bytes, "manifest")
        env = load_envelope(data, "manifest")
        manifest = Manifest.from_signed(env["signed"])
        require_threshold(env, self.root.roles["targets"], self.root.keys,
                          f"manifest {manifest.name} v{manifest.version}")
        return manifest

    def verify_manifest(
        self,
        data: bytes,
        *,
        name: str,
        now: datetime,
        active_version: int | None,
        expected_version: int | None = None,
        min_version: int | None = None,
    ) -> Manifest:
        """A manifest the device may install now, or a ``TrustError`` saying why not.

        ``active_version``: what runs now (the new version must be strictly greater);
        ``min_version``: the highest version this device ever activated (never go below it; equal
        is allowed so a device that fell back from a corrupted slot can reinstall it)."""
        self.check_root_fresh(now)
        manifest = self.verify_signed_manifest(data)
        if manifest.name != name:
            raise BindingError(f"manifest is for model {manifest.name!r}, this device follows {name!r}")
        if expected_version is not None and manifest.version != expected_version:
            raise BindingError(
                f"manifest says version {manifest.version}, the control plane announced {expected_version}"
            )
        if active_version is not None and manifest.version <= active_version:
            raise RollbackError(
                f"manifest version {manifest.version} is not newer than the running version {active_version}"
            )
        if min_version is not None and manifest.version < min_version:
            raise RollbackError(
                f"manifest version {manifest.version} is older than version {min_version} this device already ran"
            )
        if now >= manifest.expires:
            raise FreezeError(
                f"manifest {manifest.name} v{manifest.version} expired at {manifest.expires:%Y-%m-%d %H:%M:%S}Z"
            )
        if manifest.size > self.limits.max_artifact_bytes:
            raise OversizeError(
                f"artifact of {manifest.size} bytes exceeds the device limit {self.limits.max_artifact_bytes}"
            )
        return manifest

    # ---- desired state (freshness) -------------------------------------------------------------

    @property
    def requires_freshness(self) -> bool:
        """True once the trusted root delegates a ``freshness`` role: unsigned hints are refused."""
        return "freshness" in self.root.roles

    def verify_desired(self, data: bytes, *, device: str, now: datetime,
                       newest_issued: datetime | None) -> DesiredState:
        """The desired-state statement the device may act on now, or a ``TrustError``.

        ``newest_issued``: the ``issued`` time of the newest statement this device accepted (an
        older one is a replay); ``now`` at or past ``expires`` is a freeze: a mirror or a man in the
        middle that keeps answering "stay" cannot do so beyond the statement's few minutes."""
        if not self.requires_freshness:
            raise BindingError(f"trusted root v{self.root.version} delegates no freshness role")
        _check_size(data, self.limits.max_metadata_bytes, "desired state")
        env = load_envelope(data, "desired")
        state = DesiredState.from_signed(env["signed"])
        require_threshold(env, self.root.roles["freshness"], self.root.keys, "desired state")
        if state.device != device:
            raise BindingError(f"desired state is for device {state.device!r}, this is {device!r}")
        if newest_issued is not None and state.issued < newest_issued:
            raise RollbackError(
                f"desired state issued {state.issued:%Y-%m-%d %H:%M:%S}Z is older than one already seen "
                f"({newest_issued:%Y-%m-%d %H:%M:%S}Z): a replay")
        if now >= state.expires:
            raise FreezeError(
                f"desired state expired at {state.expires:%Y-%m-%d %H:%M:%S}Z: the control plane's answer is "
                "stale (a replayed or frozen answer)")
        return state


def download_budget(manifest: Manifest, encoding: str | None) -> tuple[int, str]:
    """(exact byte count, sha256) of the bytes to download for ``encoding`` (None: identity)."""
    if encoding is None:
        return manifest.size, manifest.sha256
    t = manifest.transfers.get(encoding)
    if t is None:
        raise BindingError(f"manifest v{manifest.version} has no {encoding} transfer")
    return t.size, t.sha256


def check_adapter_base(manifest: Manifest, installed_base_sha256: str | None) -> None:
    """An adapter installs only onto the exact base model it was made for (``base_sha256`` in its
    signed manifest); an adapter for another base, or with no base installed, is a ``BindingError``."""
    if not manifest.is_adapter:
        return
    if installed_base_sha256 is None:
        raise BindingError(f"adapter {manifest.name} v{manifest.version} needs its base model "
                           f"{str(manifest.base_sha256)[:16]}... installed first; this device runs none")
    if manifest.base_sha256 != installed_base_sha256:
        raise BindingError(f"adapter {manifest.name} v{manifest.version} is for base model "
                           f"{str(manifest.base_sha256)[:16]}..., this device runs base "
                           f"{installed_base_sha256[:16]}...")


def delta_budget(manifest: Manifest, offer: dict[str, object]) -> tuple[int, str]:
    """(byte count, sha256) of an offered delta: it must be smaller than every full transfer of
    ``manifest`` (a delta that is not is refused: the full transfer is cheaper and signed). The
    offer is unsigned; the reconstruction is checked against the manifest (``check_artifact``)."""
    size, sha = offer.get("size"), offer.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(sha, str) or len(sha) != 64:
        raise BindingError("malformed delta offer")
    full = min([manifest.size, *(t.size for t in manifest.transfers.values())])
    if size >= full:
        raise OversizeError(f"a delta of {size} bytes is not smaller than the full transfer ({full} bytes)")
    return size, sha


def check_received(what: str, expected_sha: str, expected_size: int, sha256: str, size: int) -> None:
    """Bytes received (artifact or transfer): size first (endless data), then hash (tampering)."""
    if size > expected_size:
        raise OversizeError(f"{what}: received {size} bytes, the manifest allows {expected_size}")
    if size != expected_size:
        raise HashMismatchError(f"{what}: received {size} bytes, the manifest says {expected_size}")
    if sha256 != expected_sha:
        raise HashMismatchError(f"{what}: sha256 {sha256[:16]}... does not match the manifest's {expected_sha[:16]}...")


def check_artifact(manifest: Manifest, sha256: str, size: int) -> None:
    check_received(f"artifact of {manifest.name} v{manifest.version}", manifest.sha256, manifest.size, sha256, size)


def _check_size(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise OversizeError(f"{what} of {len(data)} bytes exceeds the limit of {limit}")
