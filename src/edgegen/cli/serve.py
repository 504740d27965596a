"""CLI commands for the serve capability: ``edgegen serve MODEL``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli._common import err_console
from edgegen.config import get_settings
from edgegen.errors import UserInputError


def serve_cmd(
    model: Annotated[str, typer.Argument(help="GGUF path, catalogue name or source string")],
    host: Annotated[str | None, typer.Option("--host", help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option("--port", help="0 picks a free port")] = None,
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", help="a key clients must send as 'Authorization: Bearer KEY' (repeatable); "
        "or EDGEGEN_SERVE__API_KEYS='[\"k1\"]'")] = None,
    upstream: Annotated[str | None, typer.Option(
        "--upstream", help="OpenAI-compatible base URL for requests the device cannot serve")] = None,
    upstream_key: Annotated[str | None, typer.Option(
        "--upstream-key", help="API key for the upstream (or EDGEGEN_SERVE__UPSTREAM_KEY)")] = None,
    max_queue: Annotated[int | None, typer.Option(
        "--max-queue", help="requests waiting beyond the one running")] = None,
    ctx: Annotated[int | None, typer.Option("--ctx", help="context window in tokens")] = None,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="llamacpp, ort (ONNX Runtime GenAI) or auto (from the model: GGUF or ONNX folder)")] = "auto",
    ttft_deadline: Annotated[float | None, typer.Option(
        "--ttft-deadline", help="seconds to wait for the first local token before asking the upstream")] = None,
    lookup_decoding: Annotated[bool | None, typer.Option(
        "--lookup-decoding/--no-lookup-decoding",
        help="prompt-lookup speculative decoding (faster when answers copy the prompt)")] = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="name in /v1/models")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="a browser origin allowed to call the API, e.g. http://localhost:3000, "
        "or '*' (repeatable)")] = None,
    cascade_logprob: Annotated[float | None, typer.Option(
        "--cascade-logprob", help="with --upstream: forward when the mean log-probability of the first "
        "--cascade-tokens tokens is below this (e.g. -1.5)")] = None,
    cascade_entropy: Annotated[float | None, typer.Option(
        "--cascade-entropy", help="with --upstream: forward when their mean entropy (nats) is above this")] = None,
    cascade_tokens: Annotated[int | None, typer.Option("--cascade-tokens", help="tokens judged (default 8)")] = None,
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (chat, completions, streaming, metrics)."""
    from edgegen.cli.core import _resolve
    from edgegen.serve import ServerConfig, create_app, serve_forever

    s = get_settings()
    cfg, eng = s.serve, s.engine
    queue = cfg.max_queue if max_queue is None else max_queue
    if queue < 0:
        raise UserInputError("--max-queue must be 0 or more")
    n_ctx = ctx or eng.n_ctx
    if n_ctx < 16:
        raise UserInputError("--ctx must be at least 16 tokens")
    up_url = upstream or cfg.upstream_url
    if up_url is not None and not up_url.startswith(("http://", "https://")):
        raise UserInputError(f"--upstream must be an http(s) URL, not {up_url!r}")
    path = _resolve(model)
    options: dict = {"n_ctx": n_ctx, "n_threads": threads or eng.n_threads, "n_batch": eng.n_batch,
                     "use_mmap": eng.use_mmap}
    from edgegen.runtime.base import resolve_engine

    # a bad artifact, a mismatched or missing engine fails here in one line, not in the loading thread
    path, kind = resolve_engine(path, engine)
    options["engine"] = kind
    if kind.value == "llamacpp" and (cfg.lookup_decoding if lookup_decoding is None else lookup_decoding):
        from edgegen.serve.lookup import NgramDraft

        options["draft"] = NgramDraft()
    config = ServerConfig(
        model_id=model_id or Path(path).stem,
        max_queue=queue,
        api_keys=tuple(api_key or cfg.api_keys),
        upstream_url=up_url,
        upstream_key=upstream_key or cfg.upstream_key,
        upstream_timeout_s=cfg.upstream_timeout_s,
        ttft_deadline_s=cfg.ttft_deadline_s if ttft_deadline is None else ttft_deadline,
        cors_origins=tuple(cors_origin or cfg.cors_origins),
        cascade=_cascade(cfg, cascade_logprob, cascade_entropy, cascade_tokens, up_url),
    )
    # load before listening: a file the engine cannot run is refused at start (one line, exit 2), not
    # discovered by the first request
    from edgegen.runtime.base import open_engine

    preloaded: list = [open_engine(path, **options)]

    def first_then_fresh():  # the preloaded engine once, a fresh load after that
        return preloaded.pop() if preloaded else open_engine(path, **options)

    app = create_app(first_then_fresh, config)
    def listening(url: str) -> None:
        err_console.print(f"listening on {url}", highlight=False, soft_wrap=True)

    try:
        serve_forever(app, host or cfg.host, cfg.port if port is None else port, on_listening=listening)
    except OSError as exc:
        raise UserInputError(f"cannot listen on {host or cfg.host}:{port}: {exc.strerror}") from exc


def _cascade(cfg, logprob: float | None, entropy: float | None, tokens: int | None, upstream: str | None) -> dict:
    from edgegen.serve.cascade import CascadePolicy

    logprob = cfg.cascade_min_logprob if logprob is None else logprob
    entropy = cfg.cascade_max_entropy if entropy is None else entropy
    if logprob is None and entropy is None:
        return {}
    if upstream is None:
        raise UserInputError("--cascade-logprob/--cascade-entropy need --upstream to forward to")
    k = cfg.cascade_tokens if tokens is None else tokens
    if k < 1:
        raise UserInputError("--cascade-tokens must be at least 1")
    policy = CascadePolicy(k=k, min_mean_logprob=logprob, max_mean_entropy=entropy)
    return {"chat": policy, "text_completion": policy}


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
