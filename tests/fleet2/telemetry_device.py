"""A device process for the store-and-forward test: the real agent (no model server) with the real
telemetry stack, generating request events at a steady rate until a stop file appears, then
draining its spool to the control plane and exiting. Killed with SIGKILL at random by the test.

    python telemetry_device.py DATA_DIR SERVER_URL ENROLL_TOKEN STOP_FILE EVENTS_PER_S [P_KILL_AFTER_SEND]

With P_KILL_AFTER_SEND > 0 the process SIGKILLs itself with that probability right after the
control plane acknowledged a batch and before the spool forgets it: the worst moment, after which
the batch is sent again and must be recognised as a duplicate.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

from edgegen.agent.agent import Agent, AgentConfig
from edgegen.agent.serving import NullServer
from edgegen.telemetry.device import DeviceTelemetry
from edgegen.telemetry.events import Ack, Batch


class KillAfterSend:
    """The real transport, but sometimes the process dies between the control plane's ack and ours."""

    def __init__(self, inner, p: float) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.p = inner, p

    def send(self, batch: Batch) -> Ack:
        ack = self.inner.send(batch)
        if random.random() < self.p:
            os.kill(os.getpid(), signal.SIGKILL)
        return ack


def main() -> None:
    data_dir, url, token, stop_file, rate = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), float(
        sys.argv[5])
    logging.basicConfig(level=logging.WARNING)
    tel = DeviceTelemetry.open(data_dir, spool_bytes=64 * 1024**2, upload_interval_s=0.2)
    agent = Agent(AgentConfig(data_dir=data_dir, server=url, poll_interval_s=0.5), server=tel.wrap(NullServer()))
    agent.enroll(token)  # a no-op after the first run
    assert tel.start(), "enrolled but no credential"
    p_kill = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    if p_kill > 0:
        assert tel.uploader is not None
        tel.uploader.transport = KillAfterSend(tel.uploader.transport, p_kill)
    stop = threading.Event()
    def until(_outcome: str) -> bool:
        tel.sample_memory()  # once per poll, as `edgegen agent run` does
        return False

    poller = threading.Thread(target=agent.run, args=(stop,), kwargs={"until": until}, daemon=True)
    poller.start()
    n = 0
    while not stop_file.exists():
        tel.recorder.request(prompt=f"request {n}", prompt_tokens=10, completion_tokens=5, ttft_s=0.01,
                             total_s=0.05)
        n += 1
        time.sleep(1.0 / rate)
    stop.set()
    if tel.uploader is not None and isinstance(tel.uploader.transport, KillAfterSend):
        tel.uploader.transport.p = 0.0
    deadline = time.monotonic() + 60
    while tel.spool.stats().pending and time.monotonic() < deadline:
        assert tel.uploader is not None
        tel.uploader.flush()
        time.sleep(0.1)
    pending = tel.spool.stats().pending
    tel.close(flush=False)
    (data_dir / "drained").write_text(str(pending))


if __name__ == "__main__":
    main()
