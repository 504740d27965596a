"""Turn a validated API request into what the engine runs: prompt token ids and sampling parameters.

Runs off the event loop (templates and tokenization of long prompts take milliseconds) but outside
the engine's worker: it only reads the vocabulary and chat template, which llama.cpp allows from
any thread. It decides what the device can serve: a prompt that does not fit the context raises
``ContextOverflowError`` (the caller answers 400 or forwards upstream) and a request the engine
cannot run raises ``InvalidRequestError``. It does not generate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgegen.errors import ContextOverflowError, InvalidRequestError
from edgegen.runtime.engine import Engine, SamplingParams
from edgegen.serve.protocol import sampling_params
from edgegen.serve.schemas import ChatCompletionRequest, CompletionRequest

# OpenAI renamed "system" to "developer" for newer models; chat templates know only "system".
_ROLE_ALIASES = {"developer": "system"}


@dataclass(frozen=True)
class Prepared:
    ids: list[int]
    params: SamplingParams
    echo: str = ""  # text to send before the completion (completions with echo=true)

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


def prepare(engine: Engine, req: ChatCompletionRequest | CompletionRequest,
            base: SamplingParams = SamplingParams()) -> Prepared:
    params = sampling_params(req, engine.n_ctx, base)
    echo = ""
    if isinstance(req, ChatCompletionRequest):
        ids, stops = _chat_ids(engine, req)
        params = replace(params, stop=tuple(dict.fromkeys(params.stop + stops)))
    else:
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            ids = _tokenize(engine, prompt, add_bos=True)
            echo = prompt if req.echo else ""
        else:
            bad = [t for t in prompt if not 0 <= t < engine.n_vocab]
            if bad:
                raise InvalidRequestError(
                    f"prompt token id {bad[0]} is outside the vocabulary (0..{engine.n_vocab - 1})")
            ids = list(prompt)
            echo = engine.detokenize(ids) if req.echo and ids else ""
        if not ids:
            ids = [engine.bos_id]
    if len(ids) >= engine.n_ctx:
        raise ContextOverflowError(
            f"this prompt is {len(ids)} tokens and the context window is {engine.n_ctx} tokens")
    return Prepared(ids=ids, params=params, echo=echo)


def _chat_ids(engine: Engine, req: ChatCompletionRequest) -> tuple[list[int], tuple[str, ...]]:
    messages = [{"role": _ROLE_ALIASES.get(m.role, m.role), "content": m.text()} for m in req.messages]
    try:
        prompt, stops = engine.chat_prompt(messages)
    except Exception as exc:  # jinja2 TemplateError/raise_exception: the template refused these messages
        raise InvalidRequestError(f"the model's chat template rejected these messages: {exc}") from exc
    ids = _tokenize(engine, prompt, add_bos=True)
    # The template may already start with the BOS text, which tokenizes to BOS: keep one, not two.
    if len(ids) >= 2 and ids[0] == ids[1] == engine.bos_id:
        ids = ids[1:]
    return ids, stops


def _tokenize(engine: Engine, text: str, *, add_bos: bool) -> list[int]:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError("the prompt is not valid Unicode (lone surrogate)") from exc
    return engine.tokenize(text, add_bos=add_bos)
