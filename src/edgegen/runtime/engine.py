"""The on-device engine: llama.cpp through llama-cpp-python.

``Engine`` loads a GGUF file (mmap, threads, context size) and offers
    tokenize / detokenize
    stream(prompt, params)      -> iterator of ``Token`` (text piece, id, optional logprob), then stops
    complete(prompt, params)    -> ``Completion`` (text, usage, finish reason, timings)
    chat_prompt(messages)       -> the model's own chat template applied to messages
    logits(tokens)              -> [n_tokens, n_vocab] float32, a fresh context each call (for eval)

The generation loop (stops, seeds, logprobs, cancellation) is ``runtime.generate.TokenLoop``,
shared with the ONNX Runtime engine; this module gives it llama.cpp's sampled tokens. ``SamplingParams``,
``Token``, ``StreamStats`` and ``Completion`` are re-exported from there.
Sampling state belongs to one call: the seed (drawn fresh from ``seed_source`` when a call names
none), temperature, top-p, stops and grammar of a call never reach the next one.

An Engine is not thread-safe: one context, one caller at a time (the server serialises). Closing the
stream generator (e.g. when an HTTP client disconnects) stops generation at the next token.
This module does not download, convert or quantize anything.
"""

from __future__ import annotations

import ctypes
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import ChatTemplateError, ContextOverflowError, EngineError, InvalidModelError, UserInputError
from edgegen.formats.gguf_file import context_length, validate_gguf
from edgegen.runtime.generate import (  # re-exported: callers import the call's values from here too
    Completion,
    Decoder,
    SamplingParams,
    StreamStats,
    Token,
    TokenLoop,
    default_threads,
)

__all__ = ["Completion", "Engine", "SamplingParams", "StreamStats", "Token", "default_threads"]

log = logging.getLogger(__name__)


class Engine(TokenLoop):
    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        use_mmap: bool = True,
        logits_all: bool = False,
        draft: Any | None = None,
        seed_source: random.Random | None = None,
        lora_path: str | Path | None = None,
    ) -> None:
        """``draft``: an optional llama-cpp-python draft model for speculative decoding, e.g.
        ``llama_cpp.llama_speculative.LlamaPromptLookupDecoding()`` (prompt-lookup decoding). It needs
        logits for every position, so it implies ``logits_all`` (n_ctx x n_vocab float32 of host memory).
        ``seed_source``: where unseeded calls draw their seed (default: the OS's entropy).
        ``lora_path``: a LoRA adapter GGUF applied to every generation (more: ``self.adapters``, see
        ``runtime/lora.py``)."""
        self.path = Path(model_path)
        logits_all = logits_all or draft is not None
        n_train = context_length(validate_gguf(self.path))
        if n_train:  # RoPE beyond the trained length only produces garbage on these models
            n_ctx = min(n_ctx, n_train)
        import llama_cpp

        self._llama_cpp = llama_cpp
        t0 = time.perf_counter()
        try:
            self._llm = _llama_class()(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_threads=n_threads or default_threads(),
                n_threads_batch=n_threads or default_threads(),
                n_batch=n_batch,
                n_ubatch=n_batch,
                use_mmap=use_mmap,
                logits_all=logits_all,
                draft_model=draft,
                verbose=False,
            )
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError on load failures
            # the file passed validate_gguf, so llama.cpp refused its contents (damaged metadata or
            # tensor infos, an architecture it does not run): the user's file, not our failure
            raise InvalidModelError(f"llama.cpp could not load {self.path}: {exc}") from exc
        self.load_s = time.perf_counter() - t0
        self.n_ctx = self._llm.n_ctx()
        self.n_vocab = self._llm.n_vocab()
        self.metadata: dict[str, str] = dict(self._llm.metadata)
        # a chat template that does not compile was set aside at load: completions still work
        self.template_error: str | None = self._llm.template_errors.get("tokenizer.chat_template")
        self.logits_all = logits_all
        self._vocab = vocab = llama_cpp.llama_model_get_vocab(self._llm._model.model)
        self._eog = frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        spm = llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_SPM
        self._space_prefix = _adds_space_prefix(self.metadata, spm)  # detokenize drops the space it adds
        self._seeds = seed_source or random.SystemRandom()
        self._closed = False
        from edgegen.runtime.lora import LoraAdapters

        self.adapters = LoraAdapters(self._llm)
        if lora_path is not None:
            try:
                self.adapters.load("default", Path(lora_path))
                self.adapters.default = "default"
                self.adapters.select("default")
            except EngineError:
                self.close()
                raise

    # ---- vocabulary ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (ids, any number, each in 0..n_vocab-1) as Hugging Face ``tokenizers``
        decodes them with ``skip_special_tokens=True``: what an OpenAI-style ``echo`` shows (for a prompt's
        ids and those generated after it: the prompt as written, then the streamed pieces). Each token's
        bytes are llama.cpp's ``llama_token_to_piece`` (control and unknown tokens give none); when the
        vocabulary adds SentencePiece's space prefix (Llama 2, Phi-3; not Gemma 3, not byte-level BPE) the
        one space it put before the text is dropped, as HF's Strip/Metaspace decoder and llama.cpp's own
        ``remove_space`` do. Bytes that are not UTF-8 become U+FFFD. Raises ``UserInputError`` for an id
        outside the vocabulary (llama.cpp would abort the process).

        Neither llama-cpp-python's ``Llama.detokenize`` (it drops a leading space after a BOS even where the
        text had one, and keeps the prefix space without a BOS) nor llama.cpp's ``llama_detokenize``: with
        ``remove_special`` it keeps the prefix space after a BOS, without it a leading control token uses
        up the strip, and for most BPE pre-tokenizers (Llama 3's too) it ends with a clean-up pass
        (" ." -> ".", " 's" -> "'s", as transformers' ``clean_up_tokenization_spaces``) that loses text
        (llama-vocab.cpp, llama_vocab::impl::detokenize). This is ``llama_detokenize`` without that pass,
        with the strip applied after special tokens are dropped. Known difference: tokens llama.cpp
        forces to CONTROL (Phi-3's non-special "</s>") are skipped where HF keeps them."""
        ids = [int(t) for t in tokens]
        bad = next((t for t in ids if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise UserInputError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        text = b"".join(self._token_bytes(t) for t in ids)
        if self._space_prefix and text.startswith(b" "):
            text = text[1:]
        return text.decode("utf-8", errors="replace")

    def _token_bytes(self, tok: int) -> bytes:
        """The bytes one token adds to the text (special tokens render as nothing); memoised. ``tok``
        must be in the vocabulary (llama.cpp aborts otherwise)."""
        piece = self._pieces.get(tok)
        if piece is None:
            buf = self._piece_buf
            n = self._llama_cpp.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
            if n < 0:  # a piece longer than the buffer: -n is its size
                buf = ctypes.create_string_buffer(-n)
                n = self._llama_cpp.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
            piece = buf.raw[:n] if n > 0 else b""
            self._pieces[tok] = piece
        return piece

    @property
    def bos_id(self) -> int:
        return self._llm.token_bos()

    @property
    def eos_id(self) -> int:
        return self._llm.token_eos()

    # ---- chat ---------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def chat_prompt(self, messages: Sequence[dict[str, Any]], *,
                    tools: Sequence[dict[str, Any]] | None = None) -> tuple[str, tuple[str, ...]]:
        """Render messages with the model's chat template; returns (prompt, extra stop strings).
        ``tools`` (OpenAI's shape) reach the template as its ``tools`` variable."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.chat_template
        if not template and self.template_error:
            raise ChatTemplateError(f"the model's chat template does not compile ({self.template_error}); "
                                    "completions still work")
        if not template:
            # No template in the file: a plain transcript the base model can continue.
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", ("\nuser:",)
        eos = self._piece(self.eos_id)
        bos = self._piece(self.bos_id)
        fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        resp = fmt(messages=list(messages), tools=list(tools) if tools else None)
        stops = resp.stop if isinstance(resp.stop, list) else ([resp.stop] if resp.stop else [])
        return resp.prompt, tuple(s for s in stops if s)

    def _piece(self, tok: int) -> str:
        if tok < 0:
            return ""
        return self._llm._model.token_get_text(tok)

    def chat_tokens(self, messages: Sequence[dict[str, Any]]) -> tuple[list[int], tuple[str, ...]]:
        """The rendered chat prompt as tokens (BOS added unless the template wrote it) and its stops."""
        prompt, stops = self.chat_prompt(messages)
        return self.tokenize(prompt, add_bos=not _starts_with_bos(prompt, self)), stops

    # ---- generation (the loop itself is ``runtime.generate.TokenLoop.stream``) -----------------

    def _empty_prompt(self) -> int:
        return self.bos_id

    def _decode(self, tokens: list[int], params: SamplingParams, seed: int, budget: int) -> Decoder:
        """llama.cpp samples (its sampler chain, grammar included); the logits row of the token just
        sampled is still the context's last row (llama-cpp-python 0.3 keeps ``scores`` only with
        logits_all=True, so it is read from the context itself)."""
        # llama-cpp-python keeps the last seed on the Llama object: every call sets its own
        self._llm.set_seed(seed)
        greedy = params.temperature <= 0
        ids = self._llm.generate(
            tokens,
            top_k=1 if greedy else params.top_k,
            top_p=1.0 if greedy else params.top_p,
            min_p=0.0 if greedy else params.min_p,
            temp=0.0 if greedy else params.temperature,
            repeat_penalty=params.repeat_penalty,
            reset=True,
            grammar=self._grammar(params) if params.grammar or params.constraint else None,
        )

        def last_row() -> np.ndarray:
            ptr = self._llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))  # [n_vocab]

        return ids, last_row

    def _grammar(self, params: SamplingParams) -> Any:
        """The call's GBNF grammar, or its ``Constraint`` compiled to GBNF (``runtime.constraint``)."""
        from llama_cpp.llama_grammar import LlamaGrammar

        from edgegen.runtime.constraint import to_gbnf

        gbnf = params.grammar or to_gbnf(params.constraint)  # type: ignore[arg-type]
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def token_bytes(self, tok: int) -> bytes:
        """The bytes token ``tok`` adds to the text (b"" for special tokens and ids outside the
        vocabulary): for logprobs' ``bytes``."""
        return self._token_bytes(tok) if 0 <= tok < self.n_vocab else b""

    def reset(self) -> None:
        """Forget the cached prompt prefix so the next call evaluates its prompt from scratch."""
        self._llm.reset()

    def eval_prompt(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` after those already in the context, without sampling (``reset()`` first
        to start from an empty one). A following ``stream`` whose prompt is exactly the tokens
        evaluated so far samples at once (llama-cpp-python's prefix match), so a prompt can be
        prefilled in pieces, e.g. several files taking turns in ``evaluate.bench.compare_speed``.

        Raises ``ContextOverflowError`` if the context cannot take them, ``EngineError`` if llama.cpp
        fails."""
        if self._llm.n_tokens + len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"{len(tokens)} more tokens after {self._llm.n_tokens} exceed the context window of {self.n_ctx}")
        try:
            self._llm.eval(list(tokens))
        except Exception as exc:
            raise EngineError(f"llama.cpp failed to evaluate {len(tokens)} tokens: {exc}") from exc

    # ---- evaluation ---------------------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits for every position of ``tokens``, evaluated from an empty context: [n, n_vocab]."""
        if not self.logits_all:
            raise EngineError("this Engine was loaded without logits_all=True")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens exceed the context window of {self.n_ctx}")
        self._llm.reset()
        try:
            self._llm.eval(list(tokens))
        except Exception as exc:
            raise EngineError(f"llama.cpp failed to evaluate {len(tokens)} tokens: {exc}") from exc
        return np.array(self._llm.scores[: len(tokens)], dtype=np.float32, copy=True)

    # ---- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if hasattr(self, "adapters"):  # absent when closing from a failed __init__
                self.adapters.close()
            self._llm.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LLAMA_CLASS: Any = None


def _llama_class() -> Any:
    """``llama_cpp.Llama``, except that chat templates that do not compile are set aside (in
    ``template_errors``, by metadata key) instead of failing the whole load: ``Llama.__init__``
    compiles every template it finds in ``metadata``, which it assigns once, so the subclass filters
    that assignment."""
    global _LLAMA_CLASS
    if _LLAMA_CLASS is None:
        import llama_cpp

        from edgegen.formats.chat_template import template_error

        class _Llama(llama_cpp.Llama):  # type: ignore[misc]
            template_errors: dict[str, str]

            @property
            def metadata(self) -> dict[str, str]:
                return self._edgegen_metadata

            @metadata.setter
            def metadata(self, value: dict[str, str]) -> None:
                self.template_errors = {}
                kept = {}
                for key, text in value.items():
                    err = template_error(text) if key.startswith("tokenizer.chat_template") else None
                    if err:
                        log.info("%s does not compile, set aside: %s", key, err)
                        self.template_errors[key] = err
                    else:
                        kept[key] = text
                self._edgegen_metadata = kept

        _LLAMA_CLASS = _Llama
    return _LLAMA_CLASS


def _adds_space_prefix(metadata: dict[str, str], spm: bool) -> bool:
    """Whether llama.cpp puts SentencePiece's space before the text: ``tokenizer.ggml.add_space_prefix``
    if the file has it, else True for SPM vocabularies only (llama-vocab.cpp, llama_vocab::impl::load:
    "add_space_prefix = true" for LLAMA_VOCAB_TYPE_SPM, then "ml.get_key(LLM_KV_TOKENIZER_ADD_PREFIX, ...")."""
    flag = metadata.get("tokenizer.ggml.add_space_prefix")
    return spm if flag is None else flag.strip().lower() == "true"


def _starts_with_bos(prompt: str, engine: Engine) -> bool:
    bos = engine._piece(engine.bos_id)
    return bool(bos) and prompt.startswith(bos)

