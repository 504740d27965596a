"""Request and response models in the shape of OpenAI's API (the subset a device can honour).

Requests accept unknown fields (``extra="allow"``), as llama-server and Ollama do: OpenAI clients and
frameworks send fields this server does not know (``parallel_tool_calls``, vendor extensions), and a
request forwarded upstream keeps them, since the original body is what gets forwarded. Fields the
device knows but cannot honour are rejected with a 400 when honouring them matters to the caller
(several prompts in one request, an unknown ``response_format``); the sampling knobs it lacks
(``presence_penalty``, ``frequency_penalty``) are accepted and ignored locally, as documented per field.

An explicit JSON ``null`` in any optional field of any request model means "absent" (the official
``openai`` client sends ``"n": null`` when a caller passes ``None``): ``_Request`` drops null members
before validation, so a field's default applies; a required field sent as null is still a 400.

Responses are plain models; the server builds streaming chunks as dicts (see ``protocol``) to keep
per-token work small. This module does not tokenize, sample or touch the network.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 16  # OpenAI allows 4; llama-server more. Bounded because each costs a scan per token.
StopString = Annotated[str, Field(max_length=512)]


MAX_CHOICES = 8  # n: choices are generated one after another on the one engine
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (5 for completions' ``logprobs``)


class _Request(BaseModel):
    """Base of every request model: unknown members allowed, ``null`` members treated as absent."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class StreamOptions(_Request):
    include_usage: bool = False


class _Generation(_Request):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str | None = Field(None, max_length=256,
                              description="Echoed back; default the loaded model (the device serves one).")
    max_tokens: int | None = Field(None, ge=1, description="Default: until the context is full.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy. Default 0.8.")
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: StopString | list[StopString] | None = Field(None, description=f"Up to {MAX_STOP} strings.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices, generated one after another; each "
                   "samples with its own seed (seed + i when a seed is given).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Accepted, ignored locally.")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Accepted, ignored locally.")
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = Field(False, description="llama.cpp extension: keep generating past end-of-text "
                             "(benchmarks); stops at max_tokens or the context end.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Request):
    type: Literal["text", "input_text", "output_text"]
    text: str


class FunctionCall(_Request):
    name: str = Field(max_length=64)
    arguments: str = Field("{}", description="A JSON object, as a string (OpenAI's shape).")


class ToolCall(_Request):
    id: str = Field("", max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class JsonSchemaSpec(_Request):
    name: str = Field("response", pattern=_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema the reply must satisfy.")
    strict: bool | None = None


class TextFormat(_Request):
    type: Literal["text"]


class JsonObjectFormat(_Request):
    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="llama-server extension.")


class JsonSchemaFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class FunctionDef(_Request):
    name: str = Field(pattern=_NAME)
    description: str | None = Field(None, max_length=8192)
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of the arguments object.")
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDef


class _FunctionName(_Request):
    name: str = Field(pattern=_NAME)


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: _FunctionName


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1, description="Preferred over max_tokens when set.")
    logprobs: bool = Field(False, description="Report each sampled token's log-probability.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="Also the likeliest alternatives per token "
                                                 "(only with logprobs: true).")
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema constrain the reply (a llama.cpp grammar, or ONNX "
                          "Runtime GenAI guidance).")
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        return self

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_k_logprobs(self) -> int | None:
        """None: no logprobs; else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="One prompt: a string or a list of token ids (a one-element list of either is accepted).")
    echo: bool = False
    max_tokens: int | None = Field(16, ge=1, description="OpenAI's default for completions is 16.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Report logprobs with this many alternatives.")
    suffix: str | None = Field(None, description="Not supported: a non-empty suffix is a 400.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("this server takes one prompt per request")
        return v

    def top_k_logprobs(self) -> int | None:
        """None: no logprobs; else how many alternatives per token."""
        return self.logprobs

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported by this server")
        return v

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            return p[0]  # type: ignore[return-value]
        return p  # type: ignore[return-value]


# ---- responses --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: dict[str, Any] | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgegen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    model: str | None = None
    error: str | None = None
