"""The edge server's state and routing: local first, upstream second.

``EdgeServer`` owns the engine slot, the scheduler, the metrics and the optional upstream. For each
generation request it decides who answers:

    engine loading or failed to load          -> upstream, else 503 + Retry-After
    prompt beyond the local context           -> upstream, else 400 context_length_exceeded
    queue full                                -> upstream, else 503 + Retry-After
    no first token within ttft_deadline_s     -> upstream if it answers first, else keep waiting
    first k tokens below the cascade's bar    -> upstream (local draft discarded; see ``cascade``)
    otherwise                                 -> the device

The header ``x-edgegen-route`` says which answered (``local`` or ``upstream``) and, when forwarded,
``x-edgegen-fallback`` says why. An upstream that cannot be reached turns into the local answer for
that case, with the message saying so.

Model swaps for the fleet agent: ``server.replace_engine(new_engine)`` (from the agent's thread) or
``await server.swap_engine(new_engine)`` (from a coroutine) makes ``new_engine`` serve every request
admitted from then on, waits for in-flight generations on the old engine to finish, then closes it.
Nothing in flight is dropped; for a while both models are in memory.

This module builds Starlette responses but declares no routes (``app`` does).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgegen.errors import (
    ChatTemplateError,
    ContextOverflowError,
    EngineNotReadyError,
    InvalidRequestError,
    QueueFullError,
    UpstreamError,
)
from edgegen.runtime.engine import Engine, SamplingParams, StreamStats
from edgegen.serve import protocol, structured
from edgegen.serve.adapters import adapter_for, apply_adapter
from edgegen.serve.auth import ApiKeys
from edgegen.serve.cascade import CONFIDENCE_HEADER, CascadePolicy, Confidence, decide
from edgegen.serve.choices import Assembled, ChoiceEnd, Piece, StreamAssembler, run_choices
from edgegen.serve.metrics import ServerMetrics
from edgegen.serve.prompt import Prepared, prepare
from edgegen.serve.responses import ResponseEvents, ResponsesRequest, response_body
from edgegen.serve.scheduler import EngineSlot, Scheduler, Ticket
from edgegen.serve.schemas import ChatCompletionRequest, CompletionRequest
from edgegen.serve.upstream import Upstream, UpstreamResponse

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-edgegen-route"
_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/responses": "chat",
              "/v1/models": None,
              "/health": None, "/metrics": None}
REASON_HEADER = "x-edgegen-fallback"


@dataclass(frozen=True)
class _Call:
    """What the routing needs to know about one generation request."""

    chat: bool
    stream: bool
    raw: bytes  # the body as received: forwarded upstream unchanged
    received: float
    responses: bool = False  # came in on /v1/responses (forwarded to the upstream's /responses)

    @property
    def path(self) -> str:  # relative to the upstream's base URL
        if self.responses:
            return "/responses"
        return "/chat/completions" if self.chat else "/completions"


@dataclass
class ServerConfig:
    model_id: str = "local"
    max_queue: int = 8
    api_keys: tuple[str, ...] = ()
    upstream_url: str | None = None
    upstream_key: str | None = None
    upstream_timeout_s: float = 60.0
    ttft_deadline_s: float | None = None  # only used with an upstream to fall back to
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; "*" for any
    # confidence cascade per operation ("chat", "text_completion"); only with an upstream
    cascade: dict[str, CascadePolicy] = field(default_factory=dict)


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(protocol.error_body(status, message, code=code, param=param), status_code=status,
                        headers=headers)


class EdgeServer:
    def __init__(self, engine_factory: Callable[[], Engine] | None, config: ServerConfig) -> None:
        self.config = config
        self.keys = ApiKeys(config.api_keys)
        self.slot = EngineSlot()
        self.status = "loading"
        self.load_error: str | None = None
        self.loaded_at = 0.0  # unix time the current engine started serving
        self._factory = engine_factory
        self.scheduler = Scheduler(config.max_queue, on_finish=self._record_generation)
        # Fleet II seam: callables given an ``edgegen.telemetry.events.GenerationRecord`` after each
        # local generation (worker thread; exceptions are logged, never raised into serving)
        self.observers: list[Callable[[Any], None]] = []
        self.metrics = ServerMetrics(
            queue_depth=lambda: self.scheduler.waiting, running=lambda: self.scheduler.running,
            ready=lambda: 1.0 if self.status == "ok" else 0.0)
        self.upstream = (Upstream(config.upstream_url, config.upstream_key, timeout_s=config.upstream_timeout_s)
                         if config.upstream_url else None)
        self._loader: threading.Thread | None = None
        self._closing = False

    # ---- lifetime -----------------------------------------------------------------------------

    async def startup(self) -> None:
        self.scheduler.start()
        if self._factory is not None:
            self._loader = threading.Thread(target=self._load, name="edgegen-load", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        assert self._factory is not None
        try:
            engine = self._factory()
        except Exception as exc:  # any load failure: report it on /health, keep serving via upstream
            log.error("model failed to load: %s", exc)
            self.load_error, self.status = str(exc), "error"
            return
        if self.slot.engine is not None or self._closing:  # a newer swap won, or we are shutting down
            engine.close()
            return
        self.slot.install(engine)
        self.loaded_at, self.status = time.time(), "ok"

    async def shutdown(self) -> None:
        self._closing = True
        await asyncio.to_thread(self.scheduler.stop)
        engine = self.slot.install(None)
        if engine is not None:
            engine.close()
        if self.upstream is not None:
            await self.upstream.aclose()

    def replace_engine(self, engine: Engine, *, model_id: str | None = None,
                       timeout_s: float | None = None) -> bool:
        """Serve new requests from ``engine`` at once; block until in-flight work on the old engine has
        finished, then close it. Call from any thread except the server's event loop (the fleet agent's
        thread); from a coroutine use ``await swap_engine(...)``. False if the old engine was still busy
        after ``timeout_s`` (it is then left open; new work already goes to ``engine``)."""
        old = self.slot.install(engine)
        if model_id is not None:
            self.config.model_id = model_id
        self.status, self.load_error, self.loaded_at = "ok", None, time.time()
        if old is None or old is engine:
            return True
        if not self.slot.wait_unused(old, timeout_s):
            log.warning("old engine still busy after %ss; leaving it open", timeout_s)
            return False
        old.close()
        return True

    async def swap_engine(self, engine: Engine, *, model_id: str | None = None,
                          timeout_s: float | None = None) -> bool:
        """``replace_engine`` without blocking the event loop."""
        return await asyncio.to_thread(self.replace_engine, engine, model_id=model_id, timeout_s=timeout_s)

    # ---- generation ---------------------------------------------------------------------------

    async def generate(self, request: Request, req: ChatCompletionRequest | CompletionRequest,
                       responses: ResponsesRequest | None = None) -> Response:
        """Answer one generation request. ``responses``: the request came in on /v1/responses (``req`` is
        its chat equivalent) and is answered in the Responses API's shape."""
        chat = isinstance(req, ChatCompletionRequest)
        call = _Call(chat=chat, stream=req.stream, raw=await request.body(), received=time.perf_counter(),
                     responses=responses is not None)
        try:
            lease = self.slot.lease()
        except EngineNotReadyError:
            msg = (f"the model failed to load: {self.load_error}" if self.status == "error"
                   else "the model is still loading")
            return await self._fallback(call, "engine_unavailable", 503, msg, code="model_not_ready",
                                        retry_after=5 if self.status == "loading" else 60)
        try:
            prepared = await asyncio.to_thread(prepare, lease.engine, req, self.config.sampling)
            adapter = adapter_for(lease.engine, req.model)  # "base+adapter" model names (multi-LoRA)
        except ContextOverflowError as exc:
            lease.release()
            return await self._fallback(call, "context_overflow", 400, str(exc), code="context_length_exceeded",
                                        param="messages" if chat else "prompt")
        except InvalidRequestError as exc:
            lease.release()
            return error_response(400, str(exc), headers={ROUTE_HEADER: "local"})
        except ChatTemplateError as exc:  # the model's fault, not the request's: completions still work
            lease.release()
            return error_response(500, str(exc), code="chat_template_error", headers={ROUTE_HEADER: "local"})
        except BaseException:
            lease.release()
            raise

        policy = self.config.cascade.get("chat" if chat else "text_completion") if self.upstream else None
        if policy is not None and not prepared.params.logprobs:
            prepared = replace(prepared, params=replace(prepared.params, logprobs=True))

        def make(engine: Engine, stats: StreamStats, p: Prepared = prepared) -> Iterator[Piece | ChoiceEnd]:
            apply_adapter(engine, adapter)
            return run_choices(engine, stats, p)

        try:
            ticket = self.scheduler.submit(lease, make, received_at=call.received,
                                           operation="chat" if chat else "text_completion")
            if self.observers:
                ticket.prompt_text = _prompt_text(req)
        except (QueueFullError, EngineNotReadyError) as exc:
            lease.release()
            return await self._fallback(call, "queue_full", 503, str(exc), code="queue_full",
                                        retry_after=self.scheduler.retry_after_s())

        watcher = asyncio.create_task(_watch_disconnect(request, ticket))
        try:
            if self.upstream is not None and self.config.ttft_deadline_s is not None:
                forwarded = await self._race_deadline(call, ticket)
                if forwarded is not None:
                    return forwarded
            source: Any = ticket
            if policy is not None:
                held, conf, forwarded = await self._cascade(call, ticket, policy)
                if forwarded is not None:
                    return forwarded
                source = _Replay(held, ticket)
                prepared = replace(prepared, headers={**prepared.headers, CONFIDENCE_HEADER: conf.header()})
            if responses is not None:
                if req.stream:
                    watcher.cancel()
                    return self._stream_responses(ticket, prepared, responses, source)
                return await self._complete_responses(ticket, prepared, responses, source)
            if req.stream:
                watcher.cancel()  # from here the streaming response listens for disconnects itself
                return self._stream_local(ticket, prepared, chat, req.include_usage(), lease.engine, source)
            return await self._complete_local(ticket, prepared, chat, lease.engine, source)
        finally:
            watcher.cancel()

    async def _complete_local(self, ticket: Ticket, p: Prepared, chat: bool, engine: Engine,
                              source: Any = None) -> Response:
        answer = Assembled(p, engine, chat)
        try:
            async for item in source or ticket:
                answer.feed(item)
        except Exception as exc:
            ticket.cancel()
            return error_response(500, f"generation failed: {exc}", headers={ROUTE_HEADER: "local"})
        s = ticket.stats
        build = protocol.chat_completion if chat else protocol.text_completion
        body = build(protocol.new_id("chatcmpl" if chat else "cmpl"), self.config.model_id, answer.choices(),
                     s.prompt_tokens, s.completion_tokens)
        return JSONResponse(body, headers={ROUTE_HEADER: "local", **p.headers})

    def _stream_local(self, ticket: Ticket, p: Prepared, chat: bool, include_usage: bool,
                      engine: Engine, source: Any = None) -> StreamingResponse:
        writer = protocol.ChunkWriter(chat, self.config.model_id)
        answer = StreamAssembler(writer, p, engine)

        async def events() -> AsyncIterator[bytes]:
            try:
                try:
                    async for item in source or ticket:
                        for chunk in answer.feed(item):
                            yield chunk
                except Exception as exc:
                    yield protocol.error_sse(500, f"generation failed: {exc}")
                    return
                s = ticket.stats
                if include_usage:
                    yield writer.usage(s.prompt_tokens, s.completion_tokens)
                yield protocol.SSE_DONE
            finally:
                ticket.cancel()  # a no-op when finished; stops the engine when the client went away

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={ROUTE_HEADER: "local", "cache-control": "no-cache", **p.headers})

    async def _complete_responses(self, ticket: Ticket, p: Prepared, req: ResponsesRequest,
                                  source: Any = None) -> Response:
        pieces: list[str] = []
        finish = "length"
        try:
            async for item in source or ticket:
                if isinstance(item, ChoiceEnd):
                    finish = item.finish_reason
                else:
                    pieces.append(item.token.text)
        except Exception as exc:
            ticket.cancel()
            return error_response(500, f"generation failed: {exc}", headers={ROUTE_HEADER: "local"})
        s = ticket.stats
        text = "".join(pieces)
        calls = structured.parse_tool_calls(text, p.tools, p.syntax) if p.tools else None
        body = response_body(protocol.new_id("resp"), req, self.config.model_id, protocol.now(), text=text,
                             finish_reason=finish, prompt_tokens=s.prompt_tokens,
                             completion_tokens=s.completion_tokens, item_id=protocol.new_id("msg"), calls=calls)
        return JSONResponse(body, headers={ROUTE_HEADER: "local", **p.headers})

    def _stream_responses(self, ticket: Ticket, p: Prepared, req: ResponsesRequest,
                          source: Any = None) -> StreamingResponse:
        events = ResponseEvents(req, self.config.model_id, p.tools, p.syntax)

        async def body() -> AsyncIterator[bytes]:
            try:
                for chunk in events.start():
                    yield chunk
                try:
                    async for item in source or ticket:
                        for chunk in events.feed(item):
                            yield chunk
                except Exception as exc:
                    yield protocol.error_sse(500, f"generation failed: {exc}")
                    return
                for chunk in events.end(ticket.stats.prompt_tokens, ticket.stats.completion_tokens):
                    yield chunk
            finally:
                ticket.cancel()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={ROUTE_HEADER: "local", "cache-control": "no-cache", **p.headers})

    async def _cascade(self, call: _Call, ticket: Ticket, policy: CascadePolicy
                       ) -> tuple[list[Any], Confidence, Response | None]:
        """Hold back the first ``policy.k`` tokens of choice 0 (at most ``max_wait_s``), judge them, and
        forward upstream when they fall short. Returns (held items, confidence, upstream response or None)."""
        assert self.upstream is not None
        held: list[Any] = []
        lps: list[float] = []
        ents: list[float] = []
        deadline = time.perf_counter() + policy.max_wait_s
        while len(lps) < policy.k:
            try:
                item = await ticket.get(max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                break
            except Exception:  # a generation error: let the normal path report it
                break
            if item is None:
                break
            held.append(item)
            if isinstance(item, ChoiceEnd) and item.index == 0:
                break
            if isinstance(item, Piece) and item.index == 0 and item.token.logprob is not None:
                lps.append(item.token.logprob)
                if item.token.entropy is not None:
                    ents.append(item.token.entropy)
        conf = Confidence.of(lps, ents)
        verdict = decide(conf, policy)
        if not verdict.forward:
            return held, conf, None
        try:
            up = await self.upstream.open(call.path, call.raw)
        except UpstreamError as exc:
            log.warning("cascade: the upstream is unreachable (%s); answering locally", exc)
            return held, conf, None
        ticket.cancel()
        self.metrics.forwards.inc(reason="low_confidence")
        resp = await self._relay(call, up, "low_confidence")
        resp.headers[CONFIDENCE_HEADER] = f"{conf.header()}; {verdict.reason}"
        return held, conf, resp

    async def _race_deadline(self, call: _Call, ticket: Ticket) -> Response | None:
        """Past the TTFT deadline, ask the upstream too; whoever produces first answers."""
        assert self.upstream is not None and self.config.ttft_deadline_s is not None
        remaining = self.config.ttft_deadline_s - (time.perf_counter() - call.received)
        if await ticket.wait_ready(max(0.0, remaining)):
            return None
        local = asyncio.create_task(ticket.wait_ready(None))
        remote = asyncio.create_task(self.upstream.open(call.path, call.raw))
        await asyncio.wait({local, remote}, return_when=asyncio.FIRST_COMPLETED)
        if local.done():
            remote.add_done_callback(_close_unused)
            remote.cancel()
            return None
        local.cancel()
        up = remote.result() if remote.exception() is None else None
        if up is None or up.status_code >= 400:
            if up is not None:
                await up.aclose()
            return None  # the upstream cannot help: keep waiting for the device
        ticket.cancel()
        self.metrics.forwards.inc(reason="ttft_deadline")
        return await self._relay(call, up, "ttft_deadline")

    # ---- the upstream -------------------------------------------------------------------------

    async def _fallback(self, call: _Call, reason: str, status: int, message: str, *, code: str | None = None,
                        param: str | None = None, retry_after: int | None = None) -> Response:
        """Forward upstream if one is configured and reachable; otherwise the local error."""
        if self.upstream is not None:
            try:
                up = await self.upstream.open(call.path, call.raw)
            except UpstreamError as exc:
                log.warning("fallback (%s) failed: %s", reason, exc)
                message = f"{message}; the upstream is unreachable"
            else:
                self.metrics.forwards.inc(reason=reason)
                return await self._relay(call, up, reason)
        headers = {ROUTE_HEADER: "local"}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return error_response(status, message, code=code, param=param, headers=headers)

    async def _relay(self, call: _Call, up: UpstreamResponse, reason: str) -> Response:
        headers = {**up.headers, ROUTE_HEADER: "upstream", REASON_HEADER: reason}
        if up.status_code in (401, 403):  # the device's upstream key, not the client's: not the client's fault
            await up.aclose()
            return error_response(502, f"the upstream refused this device's credentials ({up.status_code})",
                                  code="upstream_auth", headers={ROUTE_HEADER: "upstream", REASON_HEADER: reason})
        if call.stream and up.status_code < 400:
            return StreamingResponse(up.aiter_bytes(), status_code=up.status_code, headers=headers)
        try:
            content = await up.read()
        except UpstreamError as exc:
            return error_response(502, str(exc), headers={ROUTE_HEADER: "upstream", REASON_HEADER: reason})
        return Response(content, status_code=up.status_code, headers=headers)

    # ---- metrics ------------------------------------------------------------------------------

    def record_request(self, path: str, status: int, route: str, completed: bool, duration_s: float) -> None:
        """Called by the app's middleware once per HTTP request, when its response ends."""
        endpoint = path if path in _ENDPOINTS else "other"  # bounded label values, whatever clients send
        self.metrics.requests.inc(endpoint=endpoint, status=str(status), route=route or "none")
        op = _ENDPOINTS.get(path)
        if op is not None:
            error = str(status) if status >= 400 else ("" if completed else "client_disconnected")
            self.metrics.request_duration.observe(duration_s, gen_ai_operation_name=op,
                                                  route=route or "none", error_type=error)

    def _record_generation(self, ticket: Ticket) -> None:
        """Worker-thread callback when a generation ends: token usage and timings."""
        if ticket.cancelled:
            self.metrics.cancelled.inc()
        if ticket.started_at is None:
            return
        op = ticket.operation
        s = ticket.stats
        self.metrics.token_usage.observe(s.prompt_tokens, gen_ai_operation_name=op, gen_ai_token_type="input")
        self.metrics.token_usage.observe(s.completion_tokens, gen_ai_operation_name=op,
                                         gen_ai_token_type="output")
        if ticket.first_token_at is not None:
            self.metrics.ttft.observe(ticket.first_token_at - ticket.received_at, gen_ai_operation_name=op)
            if s.completion_tokens > 1 and ticket.finished_at is not None:
                per = (ticket.finished_at - ticket.first_token_at) / (s.completion_tokens - 1)
                self.metrics.tpot.observe(per, gen_ai_operation_name=op)
        if self.observers:
            self._notify(ticket)

    def _notify(self, ticket: Ticket) -> None:
        from edgegen.telemetry.events import GenerationRecord

        s = ticket.stats
        end = ticket.finished_at if ticket.finished_at is not None else time.perf_counter()
        failed = s.finish_reason is None and not ticket.cancelled
        rec = GenerationRecord(
            prompt=ticket.prompt_text, prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens,
            ttft_s=None if ticket.first_token_at is None else ticket.first_token_at - ticket.received_at,
            total_s=end - ticket.received_at, ok=not failed, error="generation failed" if failed else None,
            cancelled=ticket.cancelled, token_logprobs=tuple(s.token_logprobs), operation=ticket.operation)
        for observer in list(self.observers):
            try:
                observer(rec)
            except Exception:  # an observer must never take the engine worker down
                log.exception("generation observer failed")


def _prompt_text(req: ChatCompletionRequest | CompletionRequest) -> str:
    """The user's words: the last user message of a chat, the prompt string of a completion."""
    if isinstance(req, ChatCompletionRequest):
        users = [m.text() for m in req.messages if m.role == "user"]
        return users[-1] if users else ""
    prompt = req.single_prompt()
    return prompt if isinstance(prompt, str) else ""


class _Replay:
    """Items already taken from a ticket, then the rest of it."""

    def __init__(self, held: list[Any], ticket: Ticket) -> None:
        self.held, self.ticket = held, ticket

    async def __aiter__(self) -> AsyncIterator[Any]:
        for item in self.held:
            yield item
        async for item in self.ticket:
            yield item


async def _watch_disconnect(request: Request, ticket: Ticket) -> None:
    """Cancel ``ticket`` when the client disconnects before its answer is sent."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.cancel()
            return


def _close_unused(task: asyncio.Task[UpstreamResponse]) -> None:
    if not task.cancelled() and task.exception() is None:
        asyncio.ensure_future(task.result().aclose())
