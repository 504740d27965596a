"""Encryption at rest: with a device key (kept outside the data directory), installed models and
adapters and the telemetry spool's event bodies are sealed (AES-GCM); a stolen data directory read
without the key reveals neither, and the device still installs, verifies and serves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from agent_kit import check_device

from edgegen.agent.agent import Agent, AgentConfig
from edgegen.agent.health import HealthPolicy
from edgegen.agent.slots import Slots
from edgegen.errors import NotEnrolledError, UserInputError
from edgegen.sealed import SealedDataError, is_sealed, is_sealed_value, read_plain
from edgegen.telemetry.device import DeviceTelemetry


def sealed_agent(url: str, data: Path, key: Path) -> Agent:
    return Agent(AgentConfig(data_dir=data, server=url, poll_interval_s=0.1, at_rest_key=key,
                             health=HealthPolicy(max_latency_s=120.0)))


def windows(data: bytes, size: int = 64, step: int = 4096) -> list[bytes]:
    return [data[i:i + size] for i in range(0, max(1, len(data) - size), step) if len(set(data[i:i + size])) > 8]


def test_stolen_data_dir_read_without_the_device_key(fleet, model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet.publish(model_versions[1], 1)
    key_file = tmp_path / "secure" / "device.key"  # e.g. on a TPM-sealed or removable volume
    agent = sealed_agent(fleet.url, tmp_path / "dev", key_file)
    agent.enroll(fleet.token())
    assert agent.run_once() == "switched"
    key = key_file.read_bytes()
    act = agent.slots.active()
    model = agent.slots.model_path(act.slot)
    plain = model_versions[1].read_bytes()
    stolen = model.read_bytes()
    assert is_sealed(model) and b"GGUF" not in stolen[:64]
    assert not any(w in stolen for w in windows(plain)), "plaintext model bytes found in the data dir"
    assert read_plain(model, key) == plain  # the device itself reads it back exactly
    check_device(agent.dir, key)  # and it verifies and generates from the sealed slot
    # The thief has the directory, not the key: nothing verifies, loads or decrypts.
    thief = Slots(agent.dir)
    with pytest.raises(SealedDataError):
        thief.file_sha256(model)
    assert Slots(agent.dir, key=b"\x00" * 32).verify(act.slot) is None  # a guessed key fails too
    with pytest.raises(SealedDataError), thief.open_runnable(act.slot):
        pass
    agent.close()


def test_telemetry_spool_bodies_are_sealed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = b"k" * 32
    tel = DeviceTelemetry.open(tmp_path / "dev", spool_bytes=1 << 20, remote_log_level=None, key=key)
    secret_prompt = "the patient's name is Jane Q. Public"
    from edgegen.telemetry.events import GenerationRecord

    tel.recorder.observe_generation(GenerationRecord(prompt=secret_prompt, prompt_tokens=9, completion_tokens=3,
                                                     ttft_s=0.1, total_s=0.5, ok=True, error=None,
                                                     operation="chat"))
    events = tel.spool.peek()
    assert any("prompt_tokens" in e.body for e in events), "the device reads its own events back"
    tel.close()
    raw = sqlite3.connect(tmp_path / "dev" / "telemetry" / "spool.db").execute("SELECT body FROM events").fetchall()
    assert raw and all("prompt_tokens" not in body and "Jane" not in body for (body,) in raw), raw
    tel2 = DeviceTelemetry.open(tmp_path / "dev", spool_bytes=1 << 20, remote_log_level=None, key=b"x" * 32)
    with pytest.raises(SealedDataError):
        tel2.spool.peek()
    tel2.spool.close()


def test_the_key_must_live_outside_the_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserInputError):
        sealed_agent("http://127.0.0.1:1", tmp_path / "dev", tmp_path / "dev" / "device.key")


def test_stolen_data_dir_holds_no_usable_credential(model_versions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a mutual-TLS fleet, the thief of the data directory (not the key) finds neither the device
    credential nor its TLS private key in the clear, and cannot talk to the control plane as the
    device; the device itself keeps working."""
    import httpx
    from cryptography.hazmat.primitives import serialization
    from test_tls import TlsFleet

    f = TlsFleet(tmp_path / "fleet", mutual=True)
    key_file = tmp_path / "secure" / "device.key"
    with f.server:
        f.publish(model_versions[1], 1)
        agent = sealed_agent(f.url, tmp_path / "dev", key_file)
        bundle = f.bundle()
        agent.enroll(bundle["token"], bundle)
        assert agent.run_once() == "switched"
        secret = agent.credential()["credential"].encode()
        for path in agent.dir.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), f"the credential lies in the clear in {path}"
                assert secret.split(b".")[1] not in path.read_bytes()
        tls_key = (agent.dir / "trust" / "device.key").read_bytes()
        assert b"ENCRYPTED PRIVATE KEY" in tls_key
        with pytest.raises(TypeError):  # PKCS#8 encrypted: no password, no key
            serialization.load_pem_private_key(tls_key, password=None)
        # The thief runs an agent on the stolen directory, without the key (or with a guessed one).
        thief = Agent(AgentConfig(data_dir=agent.dir, server=f.url))
        with pytest.raises(SealedDataError):
            thief.run_once()  # the sealed model does not even open
        for call in (thief.credential, thief.client):
            with pytest.raises(NotEnrolledError):
                call()
        guessed = tmp_path / "guess" / "device.key"
        guessed.parent.mkdir()
        guessed.write_bytes(b"\x01" * 32)
        with pytest.raises(SealedDataError):
            sealed_agent(f.url, agent.dir, guessed).credential()
        # The device itself: still enrolled, still updating over mutual TLS.
        f.publish(model_versions[2], 2)
        assert agent.run_once() == "switched"
        assert httpx.get(f"{f.url}/healthz", verify=agent.tls_context()).status_code == 200
        agent.close()
    f.admin.close()
    f.app.state.fleet.engine.dispose()


def test_a_credential_from_before_the_key_is_sealed_on_first_use(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A device enrolled without an at-rest key, then given one: its credential is sealed at once."""
    plain = Agent(AgentConfig(data_dir=tmp_path / "dev", server=fleet.url))
    device_id = plain.enroll(fleet.token())
    assert b'"credential"' in plain.credential_path.read_bytes()
    sealed = sealed_agent(fleet.url, tmp_path / "dev", tmp_path / "secure" / "device.key")
    assert sealed.credential()["device_id"] == device_id
    assert is_sealed_value(sealed.credential_path.read_bytes())
    assert sealed.run_once() in ("idle", "current")  # the sealed credential authenticates
