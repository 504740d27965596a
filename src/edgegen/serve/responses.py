"""OpenAI's Responses API (``POST /v1/responses``), the subset a device serves: text and function calls.

    ResponsesRequest            the request: ``input`` (a string, or message, ``function_call`` and
                                ``function_call_output`` items), ``instructions``, ``max_output_tokens``,
                                sampling knobs, ``text.format`` (json_schema / json_object, constrained
                                like chat's ``response_format``), function ``tools`` with ``tool_choice``
                                and ``parallel_tool_calls`` (constrained and parsed like chat's), ``stream``
    ResponsesRequest.to_chat()  the same generation as a ``ChatCompletionRequest`` (instructions become
                                the system message), so one code path samples both
    response_body(...)          the finished ``response`` object: a message, or one ``function_call``
                                output item per call
    ResponseEvents              the streamed events (``response.created`` ... ``response.completed``),
                                each an SSE ``event:`` + ``data:`` pair with a ``sequence_number``; with
                                tools, a reply that starts like a call is held back and sent as
                                ``function_call`` items with ``response.function_call_arguments.*``

Not served (a 400, not silently ignored): built-in tools (web search, file search, computer use),
``previous_response_id`` (the device keeps no conversation state), images and files in ``input``.
``store`` and ``metadata`` are accepted; nothing is stored. This module does no I/O.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from edgegen.serve import structured
from edgegen.serve.choices import ChoiceEnd, Piece
from edgegen.serve.protocol import new_id
from edgegen.serve.schemas import (
    ChatCompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    TextFormat,
    TextPart,
    Tool,
    _Request,
)
from edgegen.serve.structured import ParsedCall, ToolSyntax


class InputMessage(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Request):
    """A call the model made earlier, sent back as context (Responses' ``function_call`` item)."""

    type: Literal["function_call"]
    call_id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    arguments: str
    id: str | None = Field(None, max_length=256)
    status: str | None = None


class FunctionCallOutputItem(_Request):
    """The result of a call (Responses' ``function_call_output`` item)."""

    type: Literal["function_call_output"]
    call_id: str = Field(max_length=256)
    output: str
    id: str | None = Field(None, max_length=256)
    status: str | None = None


class FunctionTool(_Request):
    """A function tool in the Responses shape (flat: name and parameters beside ``type``)."""

    type: Literal["function"]
    name: str = Field(max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_chat(self) -> Tool:
        fn: dict[str, Any] = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return Tool.model_validate({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})


class NamedFunction(_Request):
    type: Literal["function"]
    name: str = Field(max_length=256)


class TextConfig(_Request):
    format: dict[str, Any] | None = None


class ResponsesRequest(_Request):
    model: str | None = Field(None, max_length=256)
    input: str | list[InputMessage | FunctionCallItem | FunctionCallOutputItem] = Field(
        description="A prompt, or a list of messages, function calls and their outputs.")
    instructions: str | None = Field(None, description="A system message placed before the input.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stream: bool = False
    text: TextConfig | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _served(self) -> ResponsesRequest:
        if self.previous_response_id:
            raise ValueError("previous_response_id is not supported: this device keeps no conversation state")
        for t in self.tools or ():
            if t.get("type") != "function":
                raise ValueError(f"tools of type {t.get('type')!r} are not served here (built-in tools need "
                                 "services a device does not have); function tools are")
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

    def function_tools(self) -> list[FunctionTool]:
        return [FunctionTool.model_validate(t) for t in self.tools or ()]

    def _messages(self) -> list[dict[str, Any]]:
        """Input items as chat messages: consecutive ``function_call`` items form one assistant turn
        with several tool calls; a ``function_call_output`` is a tool message."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return messages + [{"role": "user", "content": self.input}]
        for m in self.input:
            if isinstance(m, FunctionCallItem):
                call = {"id": m.call_id, "type": "function", "function": {"name": m.name, "arguments": m.arguments}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif isinstance(m, FunctionCallOutputItem):
                messages.append({"role": "tool", "tool_call_id": m.call_id, "content": m.output})
            else:
                messages.append({"role": m.role, "content": m.text()})
        return messages

    def to_chat(self) -> ChatCompletionRequest:
        """The equivalent chat request (raises pydantic's ValidationError for a bad ``text.format`` or tool)."""
        choice: Any = self.tool_choice
        if isinstance(choice, NamedFunction):
            choice = {"type": "function", "function": {"name": choice.name}}
        tools = [t.as_chat().model_dump(exclude_none=True) for t in self.function_tools()] or None
        fields: dict[str, Any] = {"model": self.model, "messages": self._messages(),
                                  "max_tokens": self.max_output_tokens, "temperature": self.temperature,
                                  "top_p": self.top_p, "stream": self.stream, "tools": tools,
                                  "tool_choice": choice, "parallel_tool_calls": self.parallel_tool_calls}
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


def _function_call(item_id: str, call: ParsedCall, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
            "arguments": call.arguments if status == "completed" else "", "status": status}


def response_body(resp_id: str, req: ResponsesRequest, model: str, created: int, *, text: str | None,
                  finish_reason: str | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                  item_id: str = "", calls: list[ParsedCall] | None = None,
                  call_ids: list[str] | None = None) -> dict[str, Any]:
    """The ``response`` object; ``text`` None means still in progress (no output yet). With ``calls``
    the output is one ``function_call`` item per call (ids ``call_ids``, else fresh ones)."""
    done = text is not None
    incomplete = finish_reason == "length" and not calls
    status = ("incomplete" if incomplete else "completed") if done else "in_progress"
    fmt = (req.text.format if req.text and req.text.format else {"type": "text"})
    if calls:
        ids = call_ids or [new_id("fc") for _ in calls]
        output = [_function_call(i, c) for i, c in zip(ids, calls, strict=True)]
    else:
        output = [_message(item_id, text, "incomplete" if incomplete else "completed")] if done else []
    choice = req.tool_choice.model_dump() if isinstance(req.tool_choice, NamedFunction) else (req.tool_choice or "auto")
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "instructions": req.instructions, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "max_output_tokens": req.max_output_tokens, "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None, "store": False,
        "temperature": req.temperature, "top_p": req.top_p, "text": {"format": fmt},
        "tool_choice": choice, "tools": [t.model_dump(exclude_none=True) for t in req.function_tools()],
        "truncation": "disabled", "usage": _usage(prompt_tokens, completion_tokens) if done else None,
    }


class ResponseEvents:
    """The Responses stream of one local answer: ``start()``, then ``feed(item)`` per generated item,
    then ``end(prompt_tokens, completion_tokens)``; each returns SSE bytes to send. With ``tools``, text
    that starts like a call (in ``syntax``) is held back until the end, then sent as function calls, or
    as text if it does not parse as calls."""

    def __init__(self, req: ResponsesRequest, model: str, tools: list[Tool] | None = None,
                 syntax: ToolSyntax = ToolSyntax.JSON) -> None:
        self.req, self.model, self.tools, self.syntax = req, model, tools or [], syntax
        self.id, self.item_id, self.created = new_id("resp"), new_id("msg"), int(time.time())
        self._seq = 0
        self._text: list[str] = []
        self._finish = "stop"
        self._mode: bool | None = None if self.tools else False  # tools: undecided, a call, or text
        self._held: list[str] = []
        self._opened = False  # the message item's added events were sent

    def _event(self, type_: str, **data: Any) -> bytes:
        body = {"type": type_, "sequence_number": self._seq, **data}
        self._seq += 1
        return (f"event: {type_}\ndata: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")) +
                "\n\n").encode("utf-8")

    def _response(self, text: str | None, prompt_tokens: int = 0, completion_tokens: int = 0,
                  calls: list[ParsedCall] | None = None, call_ids: list[str] | None = None) -> dict[str, Any]:
        return response_body(self.id, self.req, self.model, self.created, text=text,
                             finish_reason=self._finish if text is not None else None,
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, item_id=self.item_id,
                             calls=calls, call_ids=call_ids)

    def start(self) -> list[bytes]:
        out = [self._event("response.created", response=self._response(None)),
               self._event("response.in_progress", response=self._response(None))]
        return out if self.tools else out + self._open()

    def _open(self) -> list[bytes]:
        self._opened = True
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [self._event("response.output_item.added", output_index=0,
                            item=_message(self.item_id, "", "in_progress")),
                self._event("response.content_part.added", **where,
                            part={"type": "output_text", "text": "", "annotations": []})]

    def _delta(self, text: str) -> list[bytes]:
        out = [] if self._opened else self._open()
        self._text.append(text)
        return out + [self._event("response.output_text.delta", item_id=self.item_id, output_index=0,
                                  content_index=0, delta=text, logprobs=[])]

    def feed(self, item: Piece | ChoiceEnd) -> list[bytes]:
        if isinstance(item, ChoiceEnd):
            self._finish = item.finish_reason
            return []
        if not item.token.text:
            return []
        if self._mode is False:
            return self._delta(item.token.text)
        self._held.append(item.token.text)
        if self._mode is None:
            self._mode = structured.looks_like_call("".join(self._held), self.syntax)
            if self._mode is False:
                held, self._held = "".join(self._held), []
                return self._delta(held)
        return []

    def end(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        held = "".join(self._held)
        calls = structured.parse_tool_calls(held, self.tools, self.syntax) if self._mode and held else None
        if calls:
            return self._end_calls(calls, prompt_tokens, completion_tokens)
        out = self._delta(held) if held else ([] if self._opened else self._open())
        text = "".join(self._text)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        final = self._response(text, prompt_tokens, completion_tokens)
        part = {"type": "output_text", "text": text, "annotations": []}
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return out + [self._event("response.output_text.done", **where, text=text, logprobs=[]),
                      self._event("response.content_part.done", **where, part=part),
                      self._event("response.output_item.done", output_index=0, item=final["output"][0]),
                      self._event(kind, response=final)]

    def _end_calls(self, calls: list[ParsedCall], prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        ids = [new_id("fc") for _ in calls]
        out: list[bytes] = []
        for k, (fid, call) in enumerate(zip(ids, calls, strict=True)):
            out += [self._event("response.output_item.added", output_index=k,
                                item=_function_call(fid, call, "in_progress")),
                    self._event("response.function_call_arguments.delta", item_id=fid, output_index=k,
                                delta=call.arguments),
                    self._event("response.function_call_arguments.done", item_id=fid, output_index=k,
                                arguments=call.arguments),
                    self._event("response.output_item.done", output_index=k, item=_function_call(fid, call))]
        final = self._response("", prompt_tokens, completion_tokens, calls=calls, call_ids=ids)
        return out + [self._event("response.completed", response=final)]
