"""OpenAI wire format, as pure functions: sampling parameters from a request, response bodies,
streaming chunks, SSE framing and error bodies.

Chunks are built as dicts and serialised with ``json.dumps`` (not pydantic) because one is made per
token. Nothing here does I/O or touches the engine.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

from edgegen.runtime.engine import SamplingParams
from edgegen.serve.schemas import ChatCompletionRequest, CompletionRequest

SSE_DONE = b"data: [DONE]\n\n"

# OpenAI's error "type" for each status this server returns.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
}


def sampling_params(req: ChatCompletionRequest | CompletionRequest, n_ctx: int,
                    base: SamplingParams = SamplingParams()) -> SamplingParams:
    """Map request fields onto the engine's parameters; unset fields keep ``base``'s values."""
    budget = req.token_budget() if isinstance(req, ChatCompletionRequest) else req.max_tokens
    params = replace(base, max_tokens=min(budget or n_ctx, n_ctx), stop=req.stop_strings(),
                     ignore_eos=req.ignore_eos)
    if req.temperature is not None:
        params = replace(params, temperature=req.temperature)
    if req.top_p is not None:
        params = replace(params, top_p=req.top_p)
    if req.seed is not None:
        params = replace(params, seed=req.seed & 0xFFFFFFFF)  # llama.cpp seeds are uint32
    if params.temperature <= 0:
        params = replace(params, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0)
    return params


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---- whole responses ----------------------------------------------------------------------------


def chat_completion(id_: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    """``choices``: OpenAI chat choices (index, message, finish_reason, logprobs)."""
    return {
        "id": id_, "object": "chat.completion", "created": now(), "model": model, "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(id_: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    """``choices``: OpenAI completion choices (index, text, finish_reason, logprobs)."""
    return {
        "id": id_, "object": "text_completion", "created": now(), "model": model, "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


# ---- streaming ----------------------------------------------------------------------------------


class ChunkWriter:
    """Builds the SSE events of one streamed answer (chat or text completion)."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.model = model
        self.created = now()
        self._object = "chat.completion.chunk" if chat else "text_completion"

    def _chunk(self, choice: dict[str, Any] | None, usage_: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {"id": self.id, "object": self._object, "created": self.created,
                                "model": self.model, "choices": [choice] if choice is not None else []}
        if usage_ is not None:
            body["usage"] = usage_
        return sse(body)

    def role(self, index: int = 0) -> bytes:
        """The opening chunk of a chat choice: the assistant role with empty content."""
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None, "logprobs": None})

    def text(self, piece: str, index: int = 0, logprobs: dict[str, Any] | None = None) -> bytes:
        if self.chat:
            return self._chunk({"index": index, "delta": {"content": piece}, "finish_reason": None,
                                "logprobs": logprobs})
        return self._chunk({"index": index, "text": piece, "finish_reason": None, "logprobs": logprobs})

    def tool_call(self, call: dict[str, Any], index: int = 0, call_index: int = 0) -> list[bytes]:
        """A whole tool call as the deltas OpenAI streams: id, type and name first, then the arguments;
        ``call_index`` is the call's place among the reply's parallel calls (OpenAI's ``tool_calls[].index``)."""
        head = {"index": call_index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        args = {"index": call_index, "function": {"arguments": call["function"]["arguments"]}}
        return [self._chunk({"index": index, "delta": {"tool_calls": [d]}, "finish_reason": None,
                             "logprobs": None}) for d in (head, args)]

    def finish(self, reason: str, index: int = 0) -> bytes:
        if self.chat:
            return self._chunk({"index": index, "delta": {}, "finish_reason": reason, "logprobs": None})
        return self._chunk({"index": index, "text": "", "finish_reason": reason, "logprobs": None})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The extra final chunk sent when ``stream_options.include_usage`` is set: no choices."""
        return self._chunk(None, usage(prompt_tokens, completion_tokens))


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


# ---- errors -------------------------------------------------------------------------------------


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None,
               type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_ or ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_sse(status: int, message: str, code: str | None = None) -> bytes:
    """An error after the stream began (headers already sent): OpenAI sends it as an SSE event."""
    return sse(error_body(status, message, code=code))
