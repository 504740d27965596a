"""The FastAPI application: OpenAI-compatible routes over an ``EdgeServer``.

    POST /v1/chat/completions   POST /v1/completions   (JSON or SSE with "stream": true)
    POST /v1/responses          (OpenAI's Responses API: text in/out, instructions, streaming events)
    GET  /v1/models             GET  /metrics (Prometheus text)
    GET  /health                (no key; 200 ready, 503 loading or failed)
    GET  /openapi.json          (no key; the API is public knowledge, the keys are not)

``create_app(model, config)`` takes a GGUF path (loaded with ``engine_options``) or a zero-argument
factory returning an ``Engine``; loading starts in the background when the app starts, so the port
answers (``/health`` 503) while the model loads. ``app.state.server`` is the ``EdgeServer``
(``await app.state.server.swap_engine(engine)`` replaces the model without dropping requests).

With ``config.cors_origins`` set, browsers on those origins may call the API: CORS preflight
(``OPTIONS``) is answered before the key check (a browser sends no credentials on preflight), the
actual request still needs its key.

Every error leaves in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: validation
failures are 400 (not FastAPI's 422), a missing or wrong key 401, unknown routes 404.
This module does not run a server (see ``runner``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgegen.runtime.engine import Engine
from edgegen.serve import metrics as metrics_mod
from edgegen.serve.responses import ResponsesRequest
from edgegen.serve.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TextCompletion,
)
from edgegen.serve.server import ROUTE_HEADER, EdgeServer, ServerConfig, error_response

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/openapi.json"})
MAX_BODY_BYTES = 8 * 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request, or prompt longer than the context"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    503: {"model": ErrorResponse, "description": "Queue full or model not loaded (see Retry-After)"},
}
_SSE = {"text/event-stream": {"schema": {"type": "string"}}}


class _Gatekeeper:
    """Pure ASGI middleware: counts and times every request (by status and route), checks API keys
    and caps the request size before any body is read."""

    def __init__(self, app: ASGIApp, server: EdgeServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        seen = {"status": 500, "route": "", "completed": False}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", ()):
                    if key == ROUTE_HEADER.encode():
                        seen["route"] = value.decode("latin-1")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                seen["completed"] = True
            await send(message)

        try:
            await self._guarded(scope, receive, observed_send)
        finally:
            self.server.record_request(scope["path"], int(seen["status"]), str(seen["route"]),
                                       bool(seen["completed"]), time.perf_counter() - t0)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if scope["path"] not in OPEN_PATHS and not self.server.keys.allows(headers.get("authorization")):
            resp = error_response(401, "Incorrect API key provided.", code="invalid_api_key",
                                  headers={"www-authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await error_response(413, f"request body over {MAX_BODY_BYTES} bytes")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(model: str | Path | Callable[[], Engine] | None, config: ServerConfig | None = None,
               *, engine_options: dict[str, Any] | None = None) -> FastAPI:
    config = config or ServerConfig()
    if model is None or callable(model):
        factory = model
    else:
        path, options = Path(model), dict(engine_options or {})

        def factory() -> Engine:  # llama.cpp or ONNX Runtime, from the artifact (or options["engine"])
            from edgegen.runtime.base import open_engine

            return open_engine(path, **options)  # type: ignore[return-value]

    server = EdgeServer(factory, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    app = FastAPI(title="edgegen edge server", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(_Gatekeeper, server=server)
    if config.cors_origins:  # added last, so it runs first: preflights never reach the key check
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], max_age=600,
                           expose_headers=[ROUTE_HEADER, "x-edgegen-fallback", "retry-after"])
    _install_error_handlers(app)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> Response:
        body = Health(status=server.status, model=config.model_id, error=server.load_error)  # type: ignore[arg-type]
        status = 200 if server.status == "ok" else 503
        headers = {"retry-after": "5"} if server.status == "loading" else None
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=metrics_mod.CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def list_models() -> ModelList:
        ids = [config.model_id]
        adapters = getattr(server.slot.engine, "adapters", None)
        if adapters is not None:  # multi-LoRA: one entry per adapter a request can pick, "base+adapter"
            ids += [f"{config.model_id.split('+')[0]}+{label}" for label in adapters.labels()]
        return ModelList(data=[ModelCard(id=i, created=int(server.loaded_at)) for i in ids])

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={**_ERRORS, 200: {"content": _SSE}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await server.generate(request, body)

    @app.post("/v1/completions", response_model=TextCompletion, responses={**_ERRORS, 200: {"content": _SSE}})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await server.generate(request, body)

    @app.post("/v1/responses", responses={**_ERRORS, 200: {"content": _SSE}})
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        try:
            chat = body.to_chat()
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
            where = "tools" if any("tool" in str(x) for x in first.get("loc", ())) or "tool" in str(
                first.get("msg")) else "text.format"
            return error_response(400, f"{where}: {first.get('msg')}", param=where)
        return await server.generate(request, chat, responses=body)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error")
