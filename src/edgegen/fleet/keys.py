"""The publisher's keyring on disk: Ed25519 keys (0600) and the root metadata chain.

    <keys>/root.key, <keys>/targets.key     the current offline private keys (PKCS#8 PEM, 0600)
    <keys>/freshness.key                    the online key of the ``freshness`` role: the control
                                            plane signs short-lived desired-state statements with
                                            it; it can sign nothing else a device would accept
    <keys>/retired/<role>-<keyid16>.key     keys rotated out (kept: an old root signs its successor)
    <keys>/root/<N>.root.json               every root version ever made (the chain devices walk)

    Keyring.init(dir)             new root, targets and freshness keys and root v1 (self-signed)
    Keyring.open(dir)             an existing keyring
    keyring.rotate(role)          a new key for ``root`` or ``targets``; writes root v(n+1) signed by
                                  the old root key and (for a root rotation) the new one too

This module never talks to the control plane (``publish.py`` uploads what it writes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgegen.durable import atomic_write
from edgegen.errors import KeyringError
from edgegen.fleet.signing import (
    RootMeta,
    SigningKey,
    canonical_json,
    check_root_successor,
    load_envelope,
    sign,
    verify_root,
)

FRESHNESS_KEY_FILE = "freshness.key"


@dataclass
class Keyring:
    dir: Path
    root_key: SigningKey
    targets_key: SigningKey
    root: RootMeta
    freshness_key: SigningKey | None = None  # the control plane's online key (copy it there)

    @property
    def root_path(self) -> Path:
        return self.dir / "root" / f"{self.root.version}.root.json"

    def root_bytes(self, version: int | None = None) -> bytes:
        return (self.dir / "root" / f"{version or self.root.version}.root.json").read_bytes()

    def chain(self) -> list[bytes]:
        return [self.root_bytes(v) for v in range(1, self.root.version + 1)]

    @classmethod
    def init(cls, keys_dir: Path, *, expires_days: float = 365.0, now: datetime | None = None) -> Keyring:
        keys_dir = Path(keys_dir)
        if (keys_dir / "root.key").exists() or (keys_dir / "root").exists():
            raise KeyringError(f"{keys_dir} already holds a keyring; use `edgegen fleet keys rotate`")
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        root_key, targets_key, fresh_key = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
        root_key.save(keys_dir / "root.key")
        targets_key.save(keys_dir / "targets.key")
        fresh_key.save(keys_dir / FRESHNESS_KEY_FILE)
        signed = RootMeta.make_signed(1, (now or datetime.now(timezone.utc)) + timedelta(days=expires_days),
                                      [root_key.public], [targets_key.public], freshness_keys=[fresh_key.public])
        env = sign(signed, [root_key])
        atomic_write(keys_dir / "root" / "1.root.json", canonical_json(env))
        return cls(keys_dir, root_key, targets_key, verify_root(env), fresh_key)

    @classmethod
    def open(cls, keys_dir: Path) -> Keyring:
        keys_dir = Path(keys_dir)
        files = sorted((keys_dir / "root").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
        if not files:
            raise KeyringError(f"no keyring in {keys_dir}: run `edgegen fleet keys init --keys {keys_dir}`")
        root = verify_root(load_envelope(files[0].read_bytes(), "root"))
        for path in files[1:]:
            root = check_root_successor(root, load_envelope(path.read_bytes(), "root"))
        fresh = keys_dir / FRESHNESS_KEY_FILE
        ring = cls(keys_dir, SigningKey.load(keys_dir / "root.key"), SigningKey.load(keys_dir / "targets.key"), root,
                   SigningKey.load(fresh) if fresh.exists() and "freshness" in root.roles else None)
        for role, key in (("root", ring.root_key), ("targets", ring.targets_key)):
            if key.keyid not in root.roles[role].keyids:
                raise KeyringError(f"{keys_dir}/{role}.key is not a {role} key of root v{root.version}")
        return ring

    def rotate(self, role: str, *, expires_days: float = 365.0, now: datetime | None = None) -> RootMeta:
        """Replace the ``role`` key; root v(n+1) is signed by the old root key (and the new one)."""
        if role not in ("root", "targets"):
            raise KeyringError(f"unknown role {role!r}: use root or targets")
        old_root_key = self.root_key
        new_key = SigningKey.generate()
        retired = self.dir / "retired"
        current = self.root_key if role == "root" else self.targets_key
        (retired / f"{role}-{current.keyid[:16]}.key").parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.dir / f"{role}.key", retired / f"{role}-{current.keyid[:16]}.key")
        new_key.save(self.dir / f"{role}.key")
        if role == "root":
            self.root_key = new_key
        else:
            self.targets_key = new_key
        expires = (now or datetime.now(timezone.utc)) + timedelta(days=expires_days)
        signed = RootMeta.make_signed(self.root.version + 1, expires,
                                      [self.root_key.public], [self.targets_key.public],
                                      freshness_keys=[self.freshness_key.public] if self.freshness_key else [])
        signers = [old_root_key] if role == "targets" else [old_root_key, new_key]
        env = sign(signed, signers)
        self.root = check_root_successor(self.root, env)
        atomic_write(self.root_path, canonical_json(env))
        return self.root

    def describe(self) -> dict[str, object]:
        return {
            "dir": str(self.dir), "root_version": self.root.version,
            "root_expires": self.root.expires.isoformat(), "root_keyid": self.root_key.keyid,
            "targets_keyid": self.targets_key.keyid,
            "root_file": str(self.root_path),
        }
