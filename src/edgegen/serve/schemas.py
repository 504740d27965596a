"""Request and response models in the shape of OpenAI's API (the subset a device can honour).

Requests accept unknown fields (``extra="allow"``), as llama-server and Ollama do: OpenAI clients and
frameworks send fields this server does not know (``parallel_tool_calls``, vendor extensions), and a
request forwarded upstream keeps them, since the original body is what gets forwarded. Fields the
device knows but cannot honour are rejected with a 400 when honouring them matters to the caller
(``n`` > 1, ``logprobs``, several prompts in one request); the sampling knobs it lacks
(``presence_penalty``, ``frequency_penalty``) are accepted and ignored locally, as documented per field.

Responses are plain models; the server builds streaming chunks as dicts (see ``protocol``) to keep
per-token work small. This module does not tokenize, sample or touch the network.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 16  # OpenAI allows 4; llama-server more. Bounded because each costs a scan per token.
StopString = Annotated[str, Field(max_length=512)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Generation(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=256, description="Echoed back; the device serves its one loaded model.")
    max_tokens: int | None = Field(None, ge=1, description="Default: until the context is full.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy. Default 0.8.")
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: StopString | list[StopString] | None = Field(None, description=f"Up to {MAX_STOP} strings.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
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


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1, description="Preferred over max_tokens when set.")
    logprobs: bool | None = Field(None, description="Not supported: true is a 400.")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="One prompt: a string or a list of token ids (a one-element list of either is accepted).")
    echo: bool = False
    max_tokens: int | None = Field(16, ge=1, description="OpenAI's default for completions is 16.")
    logprobs: int | None = Field(None, description="Not supported: a value above 0 is a 400.")
    suffix: str | None = Field(None, description="Not supported: a non-empty suffix is a 400.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("this server takes one prompt per request")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: int | None) -> int | None:
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

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
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


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
    logprobs: None = None


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
