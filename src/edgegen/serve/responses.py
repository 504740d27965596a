"""OpenAI's Responses API (``POST /v1/responses``), the subset a device serves: text in, text out.

    ResponsesRequest            the request: ``input`` (a string or message items), ``instructions``,
                                ``max_output_tokens``, sampling knobs, ``text.format`` (json_schema /
                                json_object, constrained like chat's ``response_format``), ``stream``
    ResponsesRequest.to_chat()  the same generation as a ``ChatCompletionRequest`` (instructions become
                                the system message), so one code path samples both
    response_body(...)          the finished ``response`` object
    ResponseEvents              the streamed events (``response.created`` ... ``response.completed``),
                                each an SSE ``event:`` + ``data:`` pair with a ``sequence_number``

Not served (a 400, not silently ignored): built-in tools, ``previous_response_id`` (the device keeps no
conversation state), images and files in ``input``. ``store`` and ``metadata`` are accepted; nothing is
stored. This module does no I/O.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from edgegen.serve.choices import ChoiceEnd, Piece
from edgegen.serve.protocol import new_id
from edgegen.serve.schemas import (
    ChatCompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    TextFormat,
    TextPart,
    _Request,
)


class InputMessage(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class TextConfig(_Request):
    format: dict[str, Any] | None = None


class ResponsesRequest(_Request):
    model: str | None = Field(None, max_length=256)
    input: str | list[InputMessage] = Field(description="A prompt, or a list of messages.")
    instructions: str | None = Field(None, description="A system message placed before the input.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stream: bool = False
    text: TextConfig | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _served(self) -> ResponsesRequest:
        if self.previous_response_id:
            raise ValueError("previous_response_id is not supported: this device keeps no conversation state")
        if self.tools:
            raise ValueError("tools are not supported on /v1/responses here; use /v1/chat/completions")
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input must not be empty")
        return self

    def _format(self) -> TextFormat | JsonObjectFormat | JsonSchemaFormat | None:
        fmt = self.text.format if self.text else None
        if not fmt:
            return None
        if fmt.get("type") == "json_schema":  # Responses puts name/schema/strict beside "type"
            spec = {k: v for k, v in fmt.items() if k != "type"}
            return JsonSchemaFormat.model_validate({"type": "json_schema", "json_schema": spec})
        if fmt.get("type") == "json_object":
            return JsonObjectFormat.model_validate(fmt)
        return TextFormat.model_validate(fmt)

    def to_chat(self) -> ChatCompletionRequest:
        """The equivalent chat request (raises pydantic's ValidationError for a bad ``text.format``)."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
        else:
            messages += [{"role": m.role, "content": m.text()} for m in self.input]
        fields: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_output_tokens,
                                  "temperature": self.temperature, "top_p": self.top_p, "stream": self.stream}
        chat = ChatCompletionRequest.model_validate(fields)
        chat.response_format = self._format()
        return chat


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status != "in_progress" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def response_body(resp_id: str, req: ResponsesRequest, model: str, created: int, *, text: str | None,
                  finish_reason: str | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                  item_id: str = "") -> dict[str, Any]:
    """The ``response`` object; ``text`` None means still in progress (no output yet)."""
    done = text is not None
    incomplete = finish_reason == "length"
    status = ("incomplete" if incomplete else "completed") if done else "in_progress"
    fmt = (req.text.format if req.text and req.text.format else {"type": "text"})
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": [_message(item_id, text, "incomplete" if incomplete else "completed")] if done else [],
        "instructions": req.instructions, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "max_output_tokens": req.max_output_tokens, "metadata": req.metadata or {},
        "parallel_tool_calls": False, "previous_response_id": None, "store": False,
        "temperature": req.temperature, "top_p": req.top_p, "text": {"format": fmt},
        "tool_choice": "auto", "tools": [], "truncation": "disabled",
        "usage": _usage(prompt_tokens, completion_tokens) if done else None,
    }


class ResponseEvents:
    """The Responses stream of one local answer: ``start()``, then ``feed(item)`` per generated item,
    then ``end(prompt_tokens, completion_tokens)``; each returns SSE bytes to send."""

    def __init__(self, req: ResponsesRequest, model: str) -> None:
        self.req, self.model = req, model
        self.id, self.item_id, self.created = new_id("resp"), new_id("msg"), int(time.time())
        self._seq = 0
        self._text: list[str] = []
        self._finish = "stop"

    def _event(self, type_: str, **data: Any) -> bytes:
        body = {"type": type_, "sequence_number": self._seq, **data}
        self._seq += 1
        return (f"event: {type_}\ndata: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")) +
                "\n\n").encode("utf-8")

    def _response(self, text: str | None, prompt_tokens: int = 0, completion_tokens: int = 0) -> dict[str, Any]:
        return response_body(self.id, self.req, self.model, self.created, text=text,
                             finish_reason=self._finish if text is not None else None,
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, item_id=self.item_id)

    def start(self) -> list[bytes]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [self._event("response.created", response=self._response(None)),
                self._event("response.in_progress", response=self._response(None)),
                self._event("response.output_item.added", output_index=0,
                            item=_message(self.item_id, "", "in_progress")),
                self._event("response.content_part.added", **where,
                            part={"type": "output_text", "text": "", "annotations": []})]

    def feed(self, item: Piece | ChoiceEnd) -> list[bytes]:
        if isinstance(item, ChoiceEnd):
            self._finish = item.finish_reason
            return []
        if not item.token.text:
            return []
        self._text.append(item.token.text)
        return [self._event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                            delta=item.token.text, logprobs=[])]

    def end(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        text = "".join(self._text)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        final = self._response(text, prompt_tokens, completion_tokens)
        part = {"type": "output_text", "text": text, "annotations": []}
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return [self._event("response.output_text.done", **where, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, part=part),
                self._event("response.output_item.done", output_index=0, item=final["output"][0]),
                self._event(kind, response=final)]
