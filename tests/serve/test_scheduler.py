"""The scheduler on its own, with generators standing in for the engine's token stream: bounded
admission, first-come-first-served, cancellation before and during a run, errors reaching the
caller, and a slot swap that waits for the last lease on the old engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edgegen.errors import EngineNotReadyError, QueueFullError
from edgegen.runtime.engine import StreamStats, Token
from edgegen.serve.scheduler import EngineSlot, Scheduler


class Gate:
    """A token source that yields only when the test lets it."""

    def __init__(self, n: int, pace_s: float = 0.0) -> None:
        self.n, self.opened, self.closed, self.produced = n, threading.Event(), False, 0
        self.pace_s = pace_s  # like decoding: a little time per token

    def __call__(self, engine: Any, stats: StreamStats) -> Iterator[Token]:
        try:
            for i in range(self.n):
                self.opened.wait(10)
                time.sleep(self.pace_s)
                self.produced += 1
                stats.completion_tokens += 1
                yield Token(i, f"t{i} ")
            stats.finish_reason = "length"
        finally:
            self.closed = True


def _slot() -> EngineSlot:
    slot = EngineSlot()
    slot.install(object())  # type: ignore[arg-type]  # the scheduler never touches the engine itself
    return slot


async def _drain(ticket: Any) -> str:
    return "".join([t.text async for t in ticket])


def test_admission_is_bounded_and_order_is_fifo() -> None:
    async def main() -> None:
        slot, order = _slot(), []
        sched = Scheduler(max_queue=1)
        sched.start()
        try:
            first, second = Gate(2), Gate(1)

            def tracked(name: str, gate: Gate):  # type: ignore[no-untyped-def]
                def make(engine: Any, stats: StreamStats) -> Iterator[Token]:
                    order.append(name)
                    return gate(engine, stats)
                return make

            a = sched.submit(slot.lease(), tracked("a", first))
            b = sched.submit(slot.lease(), tracked("b", second))
            with pytest.raises(QueueFullError):
                sched.submit(slot.lease(), Gate(1))
            assert sched.running + sched.waiting == 2
            first.opened.set()
            second.opened.set()
            assert await _drain(a) == "t0 t1 " and await _drain(b) == "t0 "
            assert order == ["a", "b"] and a.stats.finish_reason == "length"
            sched.submit(slot.lease(), Gate(0))  # room again
        finally:
            sched.stop()

    asyncio.run(main())


def test_cancel_while_waiting_skips_and_cancel_while_running_stops() -> None:
    async def main() -> None:
        slot, finished = _slot(), []
        sched = Scheduler(max_queue=4, on_finish=finished.append)
        sched.start()
        try:
            running, waiting = Gate(1000, pace_s=0.002), Gate(5)
            a = sched.submit(slot.lease(), running)
            b = sched.submit(slot.lease(), waiting)
            b.cancel()
            running.opened.set()
            got = []
            async for tok in a:
                got.append(tok)
                if len(got) == 3:
                    a.cancel()
            assert await _drain(b) == "" and b.cancelled and waiting.produced == 0
            assert a.cancelled and running.closed and running.produced < 500  # stopped, not run to 1000
            deadline = time.monotonic() + 5
            while len(finished) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert {id(t) for t in finished} == {id(a), id(b)}
        finally:
            sched.stop()

    asyncio.run(main())


def test_errors_reach_the_caller_and_the_worker_survives() -> None:
    async def main() -> None:
        slot = _slot()
        sched = Scheduler(max_queue=2)
        sched.start()
        try:
            def broken(engine: Any, stats: StreamStats) -> Iterator[Token]:
                yield Token(1, "ok ")
                raise RuntimeError("decode failed")

            t = sched.submit(slot.lease(), broken)
            with pytest.raises(RuntimeError, match="decode failed"):
                await _drain(t)
            gate = Gate(1)
            gate.opened.set()
            assert await _drain(sched.submit(slot.lease(), gate)) == "t0 "
        finally:
            sched.stop()

    asyncio.run(main())


def test_swap_waits_for_the_last_lease_on_the_old_engine() -> None:
    slot = EngineSlot()
    with pytest.raises(EngineNotReadyError):
        slot.lease()
    old, new = object(), object()
    slot.install(old)  # type: ignore[arg-type]
    lease = slot.lease()
    assert slot.install(new) is old  # type: ignore[arg-type]
    assert slot.lease().engine is new
    assert not slot.wait_unused(old, timeout=0.05)  # type: ignore[arg-type]
    threading.Timer(0.05, lease.release).start()
    assert slot.wait_unused(old, timeout=5)  # type: ignore[arg-type]
    lease.release()  # idempotent
