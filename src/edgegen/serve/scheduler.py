"""Serialise generations on the one engine: a bounded queue, a worker thread, cancellation, swaps.

An ``Engine`` (one llama.cpp context) is not thread-safe, so exactly one thread, the worker, runs
generations on it, first come first served. Admission is bounded: at most one running plus
``max_queue`` waiting; past that ``submit`` raises ``QueueFullError`` at once (the caller answers 503
or forwards upstream) instead of letting memory and latency grow without bound.

Each admitted generation is a ``Ticket``: the asyncio side iterates it for tokens while the worker
pushes them across threads. ``Ticket.cancel()`` (the HTTP client went away) makes the worker stop
at the next token, or skip the job if it has not started; the engine's generator is closed either way.

``EngineSlot`` holds the current engine and counts leases on it: work takes a lease before it
tokenizes and gives it back when its generation ends, so ``swap`` can install a new engine at once
while the old one is closed only after the last generation on it has finished.

This module does not know HTTP, OpenAI's formats or the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from edgegen.errors import EngineNotReadyError, QueueFullError
from edgegen.runtime.engine import Engine, StreamStats, Token

log = logging.getLogger(__name__)


class EngineLease:
    """Permission to use one engine until ``release()`` (idempotent)."""

    def __init__(self, slot: EngineSlot, engine: Engine) -> None:
        self._slot, self.engine, self._released = slot, engine, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slot._release(self.engine)


class EngineSlot:
    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._leases: dict[int, int] = {}
        self._cond = threading.Condition()

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def lease(self) -> EngineLease:
        with self._cond:
            if self._engine is None:
                raise EngineNotReadyError("no model is loaded")
            self._leases[id(self._engine)] = self._leases.get(id(self._engine), 0) + 1
            return EngineLease(self, self._engine)

    def _release(self, engine: Engine) -> None:
        with self._cond:
            n = self._leases.get(id(engine), 0) - 1
            if n <= 0:
                self._leases.pop(id(engine), None)
            else:
                self._leases[id(engine)] = n
            self._cond.notify_all()

    def install(self, engine: Engine | None) -> Engine | None:
        """Make ``engine`` current for new work; returns the previous one (still open)."""
        with self._cond:
            old, self._engine = self._engine, engine
            return old

    def wait_unused(self, engine: Engine, timeout: float | None = None) -> bool:
        """Block until no lease on ``engine`` is held; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: id(engine) not in self._leases, timeout=timeout)


_END = object()


@dataclass
class Ticket:
    """One admitted generation, consumed from the event loop with ``async for token in ticket``."""

    make: Callable[[Engine, StreamStats], Iterator[Token]]
    lease: EngineLease
    loop: asyncio.AbstractEventLoop
    operation: str = "text_completion"  # a label for metrics: "chat" or "text_completion"
    received_at: float = field(default_factory=time.perf_counter)
    stats: StreamStats = field(default_factory=StreamStats)
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    cancelled: bool = False  # stopped early because cancel() was called
    prompt_text: str = ""  # set by the server for generation observers (Fleet II drift signals)
    _events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first event (token/end/error)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _ended: bool = False  # the end marker was consumed (by ``get`` or iteration)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def _push(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancel.set()

    def _deliver(self, item: object) -> None:  # on the event loop
        self._events.put_nowait(item)
        self._ready.set()

    async def wait_ready(self, timeout: float | None) -> bool:
        """Wait until the first token (or the end, or an error) is available; False on timeout."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def get(self, timeout: float | None = None) -> object | None:
        """The next item, or None once the generation has ended; ``asyncio.TimeoutError`` if nothing
        arrives within ``timeout`` (nothing is lost: a later ``get`` or iteration resumes). Generation
        errors are raised. Iterating the ticket afterwards continues from here."""
        if self._ended:
            return None
        item = await asyncio.wait_for(self._events.get(), timeout)
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[Token]:
        while not self._ended:
            item = await self._events.get()
            if item is _END:
                self._ended = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]


class Scheduler:
    def __init__(self, max_queue: int, on_finish: Callable[[Ticket], None] | None = None) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_queue = max_queue
        self._on_finish = on_finish
        self._jobs: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._recent_s: deque[float] = deque(maxlen=16)
        self._thread: threading.Thread | None = None

    # ---- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgegen-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the jobs already admitted; later submissions are refused."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    # ---- admission ----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def submit(self, lease: EngineLease, make: Callable[[Engine, StreamStats], Iterator[Token]],
               *, received_at: float | None = None, operation: str = "text_completion") -> Ticket:
        """Admit a generation or raise ``QueueFullError``; the ticket owns ``lease`` from here on."""
        with self._lock:
            if self._thread is None:
                raise EngineNotReadyError("the scheduler is not running")
            if self._waiting + self._running >= self.max_queue + 1:
                raise QueueFullError(
                    f"the queue is full ({self._waiting} waiting, {self._running} running)")
            self._waiting += 1
        ticket = Ticket(make=make, lease=lease, loop=asyncio.get_running_loop(), operation=operation)
        if received_at is not None:
            ticket.received_at = received_at
        self._jobs.put(ticket)
        return ticket

    def retry_after_s(self) -> int:
        """A hint for 503 Retry-After: the work ahead, at the recent pace, in whole seconds (1-60)."""
        with self._lock:
            mean = sum(self._recent_s) / len(self._recent_s) if self._recent_s else 1.0
            ahead = self._waiting + self._running
        return int(min(60, max(1, math.ceil(mean * max(ahead, 1)))))

    # ---- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        for ticket in iter(self._jobs.get, None):
            with self._lock:
                self._waiting -= 1
                self._running += 1
            try:
                self._run(ticket)
            finally:
                ticket.finished_at = time.perf_counter()
                ticket.lease.release()
                if self._on_finish is not None:  # before the counts drop, so "idle" means "recorded"
                    try:
                        self._on_finish(ticket)
                    except Exception:  # metrics must never take the worker down
                        log.exception("on_finish callback failed")
                with self._lock:
                    self._running -= 1
                    if ticket.started_at is not None:
                        self._recent_s.append(ticket.finished_at - ticket.started_at)
                ticket._push(_END)

    def _run(self, ticket: Ticket) -> None:
        if ticket.cancel_requested:  # the client left while waiting: do not spend the engine on it
            ticket.cancelled = True
            return
        ticket.started_at = time.perf_counter()
        try:
            tokens = ticket.make(ticket.lease.engine, ticket.stats)
        except Exception as exc:
            ticket._push(exc)
            return
        try:
            for tok in tokens:
                if ticket.first_token_at is None:
                    ticket.first_token_at = time.perf_counter()
                if ticket.cancel_requested:
                    ticket.cancelled = True
                    break
                ticket._push(tok)
        except Exception as exc:  # llama.cpp decode failure: surfaces to the request, not the worker
            log.warning("generation failed: %s", exc)
            ticket._push(exc)
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()
