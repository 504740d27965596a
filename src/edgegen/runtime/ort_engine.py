"""The second engine: ONNX Runtime GenAI (``onnxruntime_genai``) running an exported ONNX folder.

``OrtEngine`` satisfies ``runtime.base.TextEngine`` with the same ``SamplingParams``, ``Token``,
``StreamStats`` and ``Completion`` as the llama.cpp ``Engine``, so callers do not know which one
they hold. The folder is what ``edgegen export onnx`` (ONNX Runtime GenAI's model builder) writes:
``genai_config.json``, ``model.onnx`` (+ external data) and the source's tokenizer files.

ONNX Runtime computes the logits; edgegen samples from them (``sample_token``), so both engines
share one definition of temperature, top-k, top-p (nucleus), min-p, repeat penalty and seeds, and
log-probabilities are read from the very logits a token was sampled from. The sampler chain is
llama.cpp's default order: repeat penalty -> top-k -> top-p -> min-p -> temperature -> draw.
GBNF grammars (a llama.cpp format) are refused with ``InvalidRequestError``; a ``Constraint`` (JSON
Schema shapes, ``runtime.constraint``) runs through ONNX Runtime GenAI's guidance (llguidance).

Not thread-safe; one generator per call (no prompt cache: ``reset`` has nothing to forget).
Closing a stream's iterator frees its generator at once. This module does not export models.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import (
    ContextOverflowError,
    EngineError,
    EngineNotInstalledError,
    InvalidModelError,
    InvalidRequestError,
    UserInputError,
)
from edgegen.runtime.base import GENAI_CONFIG
from edgegen.runtime.constraint import to_lark
from edgegen.runtime.generate import Decoder, SamplingParams, TokenLoop, default_threads

log = logging.getLogger(__name__)


def _import_genai() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise EngineNotInstalledError(
            "the ONNX Runtime engine is not installed: pip install 'edgegen[onnx]' (onnxruntime-genai)") from exc
    return og


def read_genai_config(folder: Path) -> dict[str, Any]:
    """``genai_config.json`` as a dict; ``InvalidModelError`` if it is missing or not a model config."""
    path = Path(folder) / GENAI_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        model = cfg["model"]
        int(model["context_length"]), int(model["vocab_size"])
    except FileNotFoundError:
        raise InvalidModelError(f"{folder} has no {GENAI_CONFIG}: not an ONNX Runtime GenAI model") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidModelError(f"{path} is not a usable ONNX Runtime GenAI config: {exc!r}") from exc
    return cfg


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                 history: Sequence[int] = ()) -> int:
    """One token id from ``logits`` [n_vocab] under ``params`` (greedy when temperature <= 0).

    Repeat penalty as in llama.cpp (divide positive, multiply negative logits of tokens in
    ``history``); then top-k, top-p, min-p over the softmax, then temperature, then a draw from ``rng``.
    """
    x = logits.astype(np.float64, copy=True)
    if params.repeat_penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        v = x[seen]
        x[seen] = np.where(v > 0, v / params.repeat_penalty, v * params.repeat_penalty)
    if params.temperature <= 0:
        return int(np.argmax(x))
    k = params.top_k if 0 < params.top_k < x.size else x.size
    idx = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
    idx = idx[np.argsort(-x[idx], kind="stable")]  # candidates, likeliest first
    z = x[idx]
    p = np.exp(z - z[0])
    p /= p.sum()
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        idx, z, p = idx[:keep], z[:keep], p[:keep]
    if params.min_p > 0.0:
        keep_mask = p >= params.min_p * p[0]
        idx, z = idx[keep_mask], z[keep_mask]
    w = np.exp((z - z[0]) / params.temperature)
    return int(idx[rng.choice(idx.size, p=w / w.sum())])


def guided_search(params: SamplingParams, seed: int) -> dict[str, Any]:
    """ONNX Runtime GenAI search options equivalent to ``params`` (greedy when temperature <= 0)."""
    if params.temperature <= 0:
        return {"do_sample": False, "repetition_penalty": params.repeat_penalty}
    return {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k if params.top_k > 0 else 0,
            "top_p": params.top_p, "repetition_penalty": params.repeat_penalty,
            "random_seed": seed & 0x7FFFFFFF}


class OrtEngine(TokenLoop):
    """An ONNX Runtime GenAI model folder behind the ``TextEngine`` interface (see the module docstring).

    ``n_ctx`` is capped at the config's ``context_length``; ``n_threads`` sets ONNX Runtime's
    intra-op threads (default: physical cores). ``n_batch`` and ``logits_all`` are accepted for
    interface parity (ONNX Runtime needs neither); ``draft`` (speculative decoding) is refused.
    Raises ``EngineNotInstalledError``, ``InvalidModelError`` or ``EngineError``.
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
                 n_batch: int = 512, use_mmap: bool = True, logits_all: bool = False,
                 draft: Any | None = None, seed_source: random.Random | None = None) -> None:
        if draft is not None:
            raise UserInputError("the ONNX Runtime engine does not support speculative (lookup) decoding")
        self.path = Path(model_path)
        cfg = read_genai_config(self.path)
        og = _import_genai()
        self._og = og
        threads = n_threads or default_threads()
        t0 = time.perf_counter()
        try:
            config = og.Config(str(self.path))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
            self._model = og.Model(config)
            self._tok = og.Tokenizer(self._model)
        except Exception as exc:  # onnxruntime_genai raises RuntimeError with the ORT message
            raise EngineError(f"ONNX Runtime GenAI could not load {self.path}: {exc}") from exc
        self.load_s = time.perf_counter() - t0
        m = cfg["model"]
        self.n_ctx = min(int(n_ctx), int(m["context_length"]))
        self.n_vocab = int(m["vocab_size"])
        self.n_threads = threads
        eos = m.get("eos_token_id", [])
        self._eog = frozenset(eos if isinstance(eos, list) else [eos]) | frozenset(
            int(t) for t in self._tok.eos_token_ids)
        self._bos = int(m.get("bos_token_id", -1) if m.get("bos_token_id") is not None else -1)
        self._eos = int(eos[0] if isinstance(eos, list) else eos)
        self.metadata: dict[str, str] = {"general.engine": "ort", "general.architecture": str(m.get("type", ""))}
        tc_path = self.path / "tokenizer_config.json"
        self._tokenizer_config: dict[str, Any] = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
        self._special = _special_tokens(self.path, self._tokenizer_config)
        self._bytes: dict[int, bytes] | None = None  # token_bytes' table, built on first use
        self._adds_bos = self._bos >= 0 and _source_adds_bos(self.path, self._tokenizer_config, self._bos)
        self._plain: Any = None  # tokenizers.Tokenizer for special=False, loaded on first use
        self._seeds = seed_source or random.SystemRandom()
        self._closed = False

    # ---- vocabulary ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids as the source's Hugging Face tokenizer makes them: with ``add_bos``, BOS leads when
        the source adds one (its ``add_bos_token`` or its post-processor template), as llama.cpp does
        from GGUF metadata. With ``special`` (llama.cpp's ``parse_special``), special tokens written in
        ``text`` (``<|im_end|>``) become their ids; without it they are tokenized as the plain text
        they are, as llama.cpp does for user text. ONNX Runtime GenAI's tokenizer always parses them,
        so plain text goes through Hugging Face ``tokenizers`` (the same tokenizer.json) with
        ``encode_special_tokens`` (only when ``text`` holds a special token's written form: text without
        one is the same either way). Raises ``EngineNotInstalledError`` if ``tokenizers`` is missing."""
        if special or not any(s and s in text for s in self._special.values()):
            ids = [int(t) for t in self._tok.encode(text)]
        else:
            ids = list(self._plain_tokenizer().encode(text, add_special_tokens=False).ids)
        bos_text = self._piece(self._bos)
        if ids and ids[0] == self._bos and not (bos_text and text.startswith(bos_text)):
            ids = ids[1:]  # a BOS the tokenizer library added itself: decided below, once
        if add_bos and self._adds_bos and (not ids or ids[0] != self._bos):
            ids.insert(0, self._bos)
        return ids

    def _plain_tokenizer(self) -> Any:
        """tokenizer.json in ``tokenizers``, with special tokens matched as text (decoding is the same
        either way); loaded on first use."""
        if self._plain is None:
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EngineNotInstalledError(
                    "the ONNX Runtime engine needs the tokenizers package to detokenize, and to tokenize "
                    "with special=False: pip install 'edgegen[onnx]'") from exc
            try:
                tk = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            except Exception as exc:  # tokenizers raises Exception subclasses of its own
                raise InvalidModelError(f"{self.path / 'tokenizer.json'} cannot be read by tokenizers: {exc}") from exc
            tk.encode_special_tokens = True
            self._plain = tk
        return self._plain

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (ids, any number, each in 0..n_vocab-1): the source's tokenizer.json
        decoded by Hugging Face ``tokenizers`` with ``skip_special_tokens=True``, the contract of the
        llama.cpp ``Engine.detokenize``. ONNX Runtime GenAI's own ``Tokenizer.decode`` is not used: it
        keeps SentencePiece's prefix space when no BOS leads, and drops a space after a special token.
        Raises ``UserInputError`` for an id outside the vocabulary, ``EngineNotInstalledError`` without
        ``tokenizers``."""
        ids = [int(t) for t in tokens]
        bad = next((t for t in ids if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise UserInputError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return str(self._plain_tokenizer().decode(ids, skip_special_tokens=True))

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    def _piece(self, tok: int) -> str:
        """The text of a token; special tokens by their written form (``<s>``, ``<|im_end|>``)."""
        if tok < 0:
            return ""
        return self._special.get(tok) or self.detokenize([tok])

    # ---- chat ---------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The source's template: ``chat_template.jinja`` (transformers >= 4.50 writes it there) or
        tokenizer_config.json's ``chat_template``."""
        jinja = self.path / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        t = self._tokenizer_config.get("chat_template")
        return t if isinstance(t, str) else None

    template_error: str | None = None  # the source's template is rendered as written (no GGUF metadata to lose)

    def chat_prompt(self, messages: Sequence[dict[str, Any]], *,
                    tools: Sequence[dict[str, Any]] | None = None) -> tuple[str, tuple[str, ...]]:
        """The source's chat template applied to messages (with OpenAI-shaped ``tools`` as its
        ``tools`` variable), rendered by the same sandboxed Jinja2 formatter as the llama.cpp engine
        (llama-cpp-python's ``Jinja2ChatFormatter``), so both engines send a model identical prompts."""
        template = self.chat_template
        if not template:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", ("\nuser:",)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = Jinja2ChatFormatter(template=template, eos_token=self._piece(self._eos),
                                  bos_token=self._piece(self._bos), add_generation_prompt=True)
        resp = fmt(messages=list(messages), tools=list(tools) if tools else None)
        stops = resp.stop if isinstance(resp.stop, list) else ([resp.stop] if resp.stop else [])
        return resp.prompt, tuple(x for x in stops if x)

    def token_bytes(self, tok: int) -> bytes:
        """The bytes token ``tok`` adds to the text (b"" for special tokens and ids outside the vocabulary),
        from tokenizer.json's vocabulary and its non-special added tokens."""
        if self._bytes is None:
            self._bytes = _vocab_bytes(self.path, self._tokenizer_config)
        return self._bytes.get(tok, b"") if tok >= 0 else b""

    def chat_tokens(self, messages: Sequence[dict[str, Any]]) -> tuple[list[int], tuple[str, ...]]:
        prompt, stops = self.chat_prompt(messages)
        return self.tokenize(prompt, add_bos=True), stops

    # ---- generation ---------------------------------------------------------------------------

    def _generator(self, capacity: int, guidance: tuple[str, str] | None = None,
                   search: dict[str, Any] | None = None) -> Any:
        gp = self._og.GeneratorParams(self._model)
        gp.set_search_options(max_length=capacity, batch_size=1, **(search or {}))
        if guidance is not None:
            try:
                gp.set_guidance(*guidance)
            except Exception as exc:  # onnxruntime_genai raises RuntimeError with llguidance's message
                raise InvalidRequestError(f"ONNX Runtime GenAI refused the {guidance[0]} constraint: {exc}") from exc
        return self._og.Generator(self._model, gp)

    def _empty_prompt(self) -> int:
        return self._bos if self._bos >= 0 else self._eos

    def _check(self, params: SamplingParams) -> None:
        if params.grammar:
            raise InvalidRequestError(
                "the ONNX Runtime engine does not run GBNF grammars (a llama.cpp format); it constrains "
                "output by JSON Schema (response_format json_object/json_schema, and tools): use those, "
                "or a GGUF model")

    def _decode(self, tokens: list[int], params: SamplingParams, seed: int, budget: int) -> Decoder:
        """ONNX Runtime computes each position's logits; ``sample_token`` draws from them with a
        NumPy generator seeded by ``seed``. A call with a ``constraint`` is constrained by ONNX Runtime
        GenAI's guidance (llguidance, ``GeneratorParams.set_guidance`` with the constraint compiled to
        Lark by ``runtime.constraint.to_lark``), which masks the logits inside
        ``generate_next_token``: ONNX Runtime then samples (its temperature, top-k, top-p, repetition
        penalty and ``random_seed``; min-p is not applied). ONNX Runtime's generator lives inside the
        id iterator: closing the iterator frees it at once."""
        row: list[np.ndarray] = []
        guided = params.constraint is not None

        def ids() -> Iterator[int]:
            history = list(tokens)
            if guided:
                gen = self._generator(len(tokens) + budget, ("lark_grammar", to_lark(params.constraint)),
                                      guided_search(params, seed))
            else:
                gen = self._generator(len(tokens) + budget)
            rng = np.random.default_rng(seed)
            try:
                gen.append_tokens(np.asarray(tokens, dtype=np.int32))
                while True:
                    last = gen.get_logits().reshape(-1)[-self.n_vocab:]  # [n_vocab], raw: before guidance
                    row[:] = [last]
                    if guided:
                        gen.generate_next_token()
                        tok = int(gen.get_next_tokens()[0])
                        yield tok
                        continue
                    tok = sample_token(last, params, rng, history if params.repeat_penalty != 1.0 else ())
                    yield tok
                    history.append(tok)
                    gen.append_tokens(np.asarray([tok], dtype=np.int32))
            finally:
                row.clear()
                del gen

        return ids(), lambda: row[0]

    def reset(self) -> None:
        """Nothing to forget: every call starts a fresh generator."""

    # ---- evaluation ---------------------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits for every position of ``tokens`` from an empty context: float32 [n, n_vocab]."""
        n = len(tokens)
        if n > self.n_ctx:
            raise ContextOverflowError(f"{n} tokens exceed the context window of {self.n_ctx}")
        gen = self._generator(n + 1)
        try:
            gen.append_tokens(np.asarray(list(tokens), dtype=np.int32))
            out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime failed to evaluate {n} tokens: {exc}") from exc
        finally:
            del gen
        out = out.reshape(-1, self.n_vocab)
        if out.shape[0] != n:
            raise EngineError(f"the ONNX model returned logits for {out.shape[0]} of {n} positions "
                              "(was it exported with the LM head pruned to the last token?)")
        return out.copy()

    # ---- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._tok = None
            self._model = None

    def __enter__(self) -> OrtEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(
        range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _vocab_bytes(folder: Path, tokenizer_config: dict[str, Any]) -> dict[int, bytes]:
    """id -> bytes of every vocabulary token: byte-level BPE (GPT-2 alphabet) or SentencePiece-style
    (``\u2581`` for space, ``<0xNN>`` byte tokens). Special tokens map to b""; added tokens that are not
    special (Qwen's ``<tool_call>``, Phi-3's ``</s>``) to their text, as HF ``decode`` and llama.cpp
    (USER_DEFINED) write them."""
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = tj.get("model", {}).get("vocab", {}) or {}
    byte_level = "ByteLevel" in json.dumps(tj.get("decoder")) or "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))
    out: dict[int, bytes] = {}
    if byte_level:
        dec = _byte_decoder()
        for text, i in vocab.items():
            out[i] = bytes(dec[c] for c in text if c in dec)
    else:
        for text, i in vocab.items():
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                out[i] = bytes([int(text[3:5], 16)])
            else:
                out[i] = text.replace("\u2581", " ").encode("utf-8")
    added = tj.get("added_tokens", []) + [
        {**v, "id": k} for k, v in (tokenizer_config.get("added_tokens_decoder") or {}).items()]
    for t in reversed(added):  # tokenizer.json's entry wins
        special = t.get("special", True)  # unflagged: special, as this table always took them
        out[int(t["id"])] = b"" if special else str(t.get("content", "")).encode("utf-8")
    return out


def _special_tokens(folder: Path, tokenizer_config: dict[str, Any]) -> dict[int, str]:
    """id -> written form of the source's added/special tokens (tokenizer.json, tokenizer_config.json)."""
    out: dict[int, str] = {}
    tj = folder / "tokenizer.json"
    if tj.is_file():
        for t in json.loads(tj.read_text(encoding="utf-8")).get("added_tokens", []):
            out[int(t["id"])] = str(t.get("content", ""))
    for k, v in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        out.setdefault(int(k), str(v.get("content", "")))
    return out


def _source_adds_bos(folder: Path, tokenizer_config: dict[str, Any], bos: int) -> bool:
    """Whether the source's tokenizer puts BOS first: tokenizer_config's ``add_bos_token`` if set,
    else a ``TemplateProcessing`` post-processor whose single-sequence template starts with BOS."""
    flag = tokenizer_config.get("add_bos_token")
    if isinstance(flag, bool):
        return flag
    tj = folder / "tokenizer.json"
    if not tj.is_file():
        return False
    post = json.loads(tj.read_text(encoding="utf-8")).get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") == "TemplateProcessing" and proc.get("single"):
            first = proc["single"][0].get("SpecialToken", {}).get("id")
            ids = (proc.get("special_tokens", {}).get(first) or {}).get("ids", [])
            return bool(ids) and ids[0] == bos
    return False
