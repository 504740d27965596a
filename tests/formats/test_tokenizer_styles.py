"""Each tokenizer style the covered architectures ship, through ``convert_model``, against HF ``tokenizers``.

A small real tokenizer of each style is trained in the test (BPE, vocabulary 1200, on ~24 KB of
Macbeth, a calibration play, plus ~2 KB of numbers) and shaped like the published one, put into a
tiny random model folder of the matching architecture, converted, and loaded in llama.cpp (Engine):

    llama3   Llama 3 byte-level BPE: its split regex (digits in runs of up to 3), <|begin_of_text|>
             added by the post-processor, header/eot specials              -> llama, pre "llama-bpe"
    qwen2    Qwen2 byte-level BPE: its regex (one digit per piece), no BOS, <|endoftext|>,
             <|im_start|>, <|im_end|> specials, non-special <tool_call> tokens -> qwen2, pre "qwen2"
    qwen3    the same tokenizer style (Qwen3 ships Qwen2's)                 -> qwen3, pre "qwen2"
    gemma3   Gemma 3's tokenizer.json form: normalizer Replace(" ", "▁"), Split(" ", MergedWithPrevious),
             BPE with byte_fallback and <0x00>..<0xFF> pieces, no space prefix, <bos> by the
             post-processor, <start_of_turn>/<end_of_turn>                  -> gemma3, "llama" (SPM) vocab
    phi3     Llama 2 / Phi-3's tokenizer.json form: normalizer Prepend("▁") + Replace(" ", "▁"),
             byte_fallback, <s> by the post-processor, chat tokens after the pieces with rstrip
             as Phi-3's have it, its non-special "</s>"; in a folder not named phi3 -> phi3, "llama" vocab
    llama2   the same pieces in the form transformers 5 writes for Llama 2 / Mistral: no normalizer,
             Metaspace(prepend_scheme="first", split=False)                 -> llama (mistral), "llama" vocab

On held-out text (Hamlet and Twelfth Night paragraphs) and awkward strings (digit runs, runs of
spaces, tabs and newlines, accents, emoji, CJK, a leading space, spaces before punctuation, Qwen's
tool-call tags, the special tokens written as text),
with and without BOS: (a) llama.cpp's ids equal HF's, with special-token parsing on (HF's default)
and off (HF's ``encode_special_tokens``); (b) llama.cpp's ``llama_detokenize`` gives HF's ``decode``,
with special tokens kept and skipped; (c) ``Engine.detokenize`` (the serve layer's echo) and the ONNX
Runtime engine's per-token bytes give HF's ``decode`` with special tokens skipped, with no allowance
beyond which tokens are special. Four behaviours of llama.cpp itself that no GGUF can change are named
with their source lines where they are allowed for (LLAMA_CPP_FORCES_CONTROL, ``_as_llama_cpp_reads_it``,
the BOS space in ``test_llama_cpp_detokenizes_like_hf``, ``_llama_cpp_cleans_spaces``), each checked to
touch only the texts it should. Negative controls: a wrong ``tokenizer.ggml.pre``, a flipped space
prefix, special tokens typed as plain text, a Phi-3 GGUF named after its folder: each fails.

Not covered: a binary ``tokenizer.model`` (sentencepiece is not installed; the stories260K tests read
a real one), Unigram models, Gemma 3's full 262k vocabulary and real Llama 3 / Qwen merges (the
styles are real, the vocabularies small).
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgegen.formats import tokenizer
from edgegen.formats.convert import convert_model
from edgegen.formats.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT
from edgegen.hub.texts import CALIBRATION_PLAYS, EVALUATION_PLAYS, plays_text
from edgegen.runtime.engine import Engine
from tests.formats.tiny import tiny_hf_folder

tokenizers = pytest.importorskip("tokenizers")
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers.trainers import BpeTrainer  # noqa: E402

TRAIN_CHARS = 24_000
VOCAB = 1200
SPM_SPACE = "▁"
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]

SPACED = "spaced out : a , b . c ? d ! e ' f ' g it 's we 're I 'm they 've don 't"  # see _llama_cpp_cleans_spaces
TRICKY = [
    "Hello world",
    " leading space, and trailing  ",
    "  two  spaces\tand a tab\n\nand new lines\r\n  indented\n\n\n",
    "numbers 12345, 3.14159 and 1,000,000; year 2024: 1234567 apples",
    "héllo wörld, naïve café — ünïcödé 日本語の文章 🤖👍 Grüße",
    "don't you'll I'M she's THEY'VE",
    "def f(x):\n    return x**2  # square",
    SPACED,
    'a call: <tool_call>{"name": "f"}</tool_call> done',  # Qwen's non-special added tokens
    "\t\ttabs first",
    "emoji only 😀😀 and CJK 漢字",
]


@dataclass(frozen=True)
class Style:
    """One published tokenizer style: how to train it, and the folder it ships in."""

    arch: str  # tiny_hf_folder kind
    build: Callable[[str], Tokenizer]  # training text -> trained HF tokenizer
    config: dict[str, Any]  # tokenizer_config.json
    specials: tuple[str, ...]  # special tokens, to be written as text in the held-out strings
    pre: str | None  # expected tokenizer.ggml.pre (byte-level BPE only)
    folder: str = "model"  # folder name; llama.cpp reads quirks off general.name (taken from it)
    space_prefix: bool = False  # SentencePiece's "▁" before the text (Llama 2 / Phi-3, not Gemma)
    differs_on: Callable[[str], bool] | None = None  # texts a known llama.cpp difference may touch
    cleans_spaces: bool = False  # llama_detokenize's clean-up pass is on for its pre-tokenizer (Llama 3's)


def _train(tok: Tokenizer, text: str, **kw: Any) -> Tokenizer:
    tok.train_from_iterator([text], BpeTrainer(vocab_size=VOCAB, show_progress=False, **kw))
    return tok


def _split_byte_level(split: str) -> Any:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), "isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _byte_level(split: str, specials: list[str], bos: str | None, user: tuple[str, ...] = (),
                ignore_merges: bool = False) -> Callable[[str], Tokenizer]:
    def build(text: str) -> Tokenizer:
        tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))  # Llama 3's: a word in the vocabulary is one piece
        # trained with Llama 3's split, so the vocabulary holds 2- and 3-digit pieces as Qwen2's does
        # (its vocabulary has them though its own split never produces them): the two names then differ
        tok.pre_tokenizer = _split_byte_level(LLAMA3_SPLIT)
        tok.decoder = decoders.ByteLevel()
        _train(tok, text, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.pre_tokenizer = _split_byte_level(split)
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
        steps = [processors.ByteLevel(trim_offsets=False)]
        if bos is not None:  # Llama 3's: ByteLevel, then the template that adds <|begin_of_text|>
            steps.append(processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]))
        tok.post_processor = processors.Sequence(steps) if len(steps) > 1 else steps[0]
        return tok

    return build


def _with_byte_pieces(tok: Tokenizer, n_first: int, flags: dict[str, dict[str, bool]]) -> Tokenizer:
    """Insert <0x00>..<0xFF> into the BPE vocabulary after its first ``n_first`` ids (where
    SentencePiece models keep them), shifting the learnt pieces up; merges are by text, so they stay.
    ``flags``: added-token fields to change, by token."""
    tj = json.loads(tok.to_str())
    by_id = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in by_id[:n_first]] + BYTE_PIECES + [p for p, _ in by_id[n_first:] if p not in BYTE_PIECES]
    tj["model"]["vocab"] = {p: i for i, p in enumerate(pieces)}
    for t in tj["added_tokens"]:
        t["id"] = tj["model"]["vocab"][t["content"]]
        t.update(flags.get(t["content"], {}))
    return Tokenizer.from_str(json.dumps(tj))


def _sentencepiece_bpe(head: list[str], tail: list[AddedToken], prepend: bool, bos: str,
                       flags: dict[str, dict[str, bool]] | None = None,
                       metaspace: bool = False) -> Callable[[str], Tokenizer]:
    def build(text: str) -> Tokenizer:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        replace = normalizers.Replace(" ", SPM_SPACE)
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM_SPACE), replace]) if prepend else replace
        if not prepend:  # Gemma 3's: a no-op after the normalizer (no spaces are left), kept to be faithful
            tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prepend else []))
        _train(tok, text, special_tokens=[AddedToken(s, special=True, normalized=False) for s in head])
        tok = _with_byte_pieces(tok, len(head), flags or {})
        tok.add_special_tokens(tail)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
        if metaspace:  # the same pieces, in the form transformers 5 writes (LlamaTokenizer, legacy=False)
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=False)
        return tok

    return build


_QWEN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
_GEMMA = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
_PHI3_CHAT = ["<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
_QWEN_CFG = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

STYLES: dict[str, Style] = {
    "llama3": Style("llama", _byte_level(LLAMA3_SPLIT, _LLAMA3, "<|begin_of_text|>", ignore_merges=True),
                    {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, tuple(_LLAMA3), "llama-bpe",
                    cleans_spaces=True),
    "qwen2": Style("qwen2", _byte_level(QWEN2_SPLIT, _QWEN, None, ("<tool_call>", "</tool_call>")),
                   _QWEN_CFG, tuple(_QWEN), "qwen2"),
    "qwen3": Style("qwen3", _byte_level(QWEN2_SPLIT, _QWEN, None, ("<tool_call>", "</tool_call>")),
                   _QWEN_CFG, tuple(_QWEN), "qwen2"),
    "gemma3": Style("gemma3", _sentencepiece_bpe(_GEMMA, [], prepend=False, bos="<bos>"),
                    {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
                    ("<bos>", "<start_of_turn>", "<end_of_turn>"), None),
    "phi3": Style("phi3", _sentencepiece_bpe(
        ["<unk>", "<s>", "</s>"],
        [AddedToken("<|endoftext|>", special=True, normalized=False)]
        + [AddedToken(t, special=True, normalized=False, rstrip=True) for t in _PHI3_CHAT],
        prepend=True, bos="<s>", flags={"</s>": {"special": False, "rstrip": True}}),  # as Phi-3's </s> is
        {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "add_bos_token": True},
        ("<s>", "<|endoftext|>", "<|user|>", "</s>", "<|end|>", "<|assistant|>"), None,
        folder="checkpoint-500",  # a fine-tune's folder: the name says nothing of Phi-3 (gguf_model_name)
        space_prefix=True, differs_on=lambda text: "</s>" in text),  # LLAMA_CPP_FORCES_CONTROL
    "llama2": Style("mistral", _sentencepiece_bpe(["<unk>", "<s>", "</s>"], [], prepend=True, bos="<s>",
                                                  metaspace=True),
                    {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, ("<s>", "</s>", "<unk>"), None,
                    space_prefix=True,  # see _as_llama_cpp_reads_it
                    differs_on=lambda text: text[:1].isspace() or any(t in text for t in ("<s>", "</s>", "<unk>"))),
}


@pytest.fixture(scope="module")
def texts(cache_home: Path) -> tuple[str, list[str]]:
    """(training text, held-out strings)."""
    # ~24 KB of Macbeth and ~2 KB of numbers (plays have few digits; real vocabularies have digit pieces)
    numbers = " ".join(f"{n}, {n * 37 % 1000}" for n in range(1, 1000, 5))
    train = plays_text(cache_home, CALIBRATION_PLAYS[:1])[5000:5000 + TRAIN_CHARS] + "\n" + numbers
    held = plays_text(cache_home, EVALUATION_PLAYS)
    paragraphs = [p for p in held[20_000:60_000].split("\n\n") if p.strip()][:40]
    return train, paragraphs + TRICKY


def _held_out(style: Style, base: list[str]) -> list[str]:
    s = style.specials
    with_specials = [
        f"{s[0]}{base[0]}",
        f"{s[1]}user\nGood morrow, sir!{s[-1]}\n{s[1]}  assistant \n\tWhat news?{s[-1]} \n",
        " ".join(s) + "  " + "".join(s),
        f"text {s[-1]}  more\n{s[1]}\n\n",
    ]
    return base + with_specials


@pytest.fixture(scope="module")
def converted(texts, tmp_path_factory: pytest.TempPathFactory):
    """style name -> (HF tokenizer, GGUF path); each built once."""
    made: dict[str, tuple[Tokenizer, Path]] = {}

    def make(name: str) -> tuple[Tokenizer, Path]:
        if name not in made:
            style = STYLES[name]
            tok = style.build(texts[0])
            root = tmp_path_factory.mktemp(name)
            folder = root / style.folder
            folder.mkdir()
            n = tok.get_vocab_size(with_added_tokens=True)
            ids = {f"{role}_token_id": tok.token_to_id(style.config[f"{role}_token"]) if style.config.get(
                f"{role}_token") else None for role in ("bos", "eos")}
            tiny_hf_folder(style.arch, folder, vocab_size=n, **ids)
            tok.save(str(folder / "tokenizer.json"))
            (folder / "tokenizer_config.json").write_text(json.dumps(style.config))
            made[name] = (tok, convert_model(folder, root / "m.gguf", dtype="f32"))
        return made[name]

    return make


def _engine(path: Path) -> Engine:
    return Engine(path, n_ctx=64, n_threads=1)


def _detokenize(engine: Engine, ids: list[int], special: bool) -> str:
    """llama.cpp's own ``llama_detokenize`` on the engine's vocabulary: ``special`` False drops special
    tokens (``remove_special``, HF's ``skip_special_tokens``), True writes them out (``unparse_special``)."""
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    size = 8 * len(ids) + 64
    while True:  # a negative count is the size it needs
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(engine._vocab, arr, len(ids), buf, size, not special, special)
        if n >= 0:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = -n


def _hf_ids(tok: Tokenizer, text: str, special: bool, add: bool) -> list[int]:
    tok.encode_special_tokens = not special  # HF's switch for not splitting special tokens out of text
    try:
        return tok.encode(text, add_special_tokens=add).ids
    finally:
        tok.encode_special_tokens = False


def _token_mismatches(tok: Tokenizer, engine: Engine, texts: list[str]) -> list[tuple[Any, ...]]:
    """(text, special, add_bos, llama.cpp ids, HF ids) wherever the two tokenize differently."""
    out = []
    for text in texts:
        for special in (True, False):
            for add in (True, False):
                want = _hf_ids(tok, text, special, add)
                got = engine.tokenize(text, add_bos=add, special=special)
                if got != want:
                    out.append((text[:40], special, add, got[:12], want[:12]))
    return out


# Known llama.cpp difference: it makes these tokens CONTROL whatever the GGUF says (llama-vocab.cpp,
# llama_vocab::impl::load: 'if (false || t.first == "<|eot_id|>" ... || t.first == "</s>" ...) {
# special_eog_ids.insert(t.second); if ((attr & LLAMA_TOKEN_ATTR_CONTROL) == 0) { ... "control-looking
# token ... its type will be overridden"'), so one that HF keeps non-special (Phi-3's "</s>") is not
# split out of text when special tokens are not parsed, and is dropped when they are skipped.
LLAMA_CPP_FORCES_CONTROL = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                            "<|eom_id|>", "<|end_of_text|>", "<eos>")


# Known llama.cpp difference: its SentencePiece tokenizer puts a space before every stretch of text
# that starts the input or follows a special token (llama-vocab.cpp, llama_tokenizer_session /
# tokenize, LLAMA_VOCAB_TYPE_SPM: "if (vocab.get_add_space_prefix() && is_prev_special) { text = ' '; }"),
# as SentencePiece's add_dummy_prefix and HF's Prepend("▁") normalizer do; HF's Metaspace with
# prepend_scheme "first" (what transformers 5 writes for Llama 2 / Mistral) adds none after a special
# token, nor before text that already starts with a space. llama.cpp is compared with the Prepend form.


def _as_llama_cpp_reads_it(tok: Tokenizer) -> Tokenizer:
    """``tok`` with the added tokens llama.cpp forces to CONTROL marked special, and a Metaspace
    pre-tokenizer replaced by the equivalent Prepend + Replace normalizer (the two notes above)."""
    tj = json.loads(tok.to_str())
    for t in tj["added_tokens"]:
        t["special"] = t["special"] or t["content"] in LLAMA_CPP_FORCES_CONTROL
    pre = tj.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") != "never":
        tj["pre_tokenizer"] = None
        tj["normalizer"] = json.loads(normalizers.Sequence([
            normalizers.Prepend(SPM_SPACE), normalizers.Replace(" ", SPM_SPACE)]).__getstate__())
    return Tokenizer.from_str(json.dumps(tj))


@pytest.mark.parametrize("name", sorted(STYLES))
def test_llama_cpp_tokenizes_like_hf(name: str, converted, texts) -> None:
    tok, path = converted(name)
    style = STYLES[name]
    held = _held_out(style, texts[1])
    ref = _as_llama_cpp_reads_it(tok)
    with _engine(path) as engine:
        if style.pre is not None:
            assert engine.metadata["tokenizer.ggml.pre"] == style.pre
        # the held-out text reaches past the learnt pieces: unseen characters become bytes
        assert any(_is_byte_token(tok, i) for i in _hf_ids(tok, TRICKY[-1], True, False))
        bad = _token_mismatches(ref, engine, held)
    assert not bad, bad[:5]
    # the known differences stay that narrow, and are real where the style has them
    differs = {text for text in held for special in (True, False) for add in (True, False)
               if _hf_ids(tok, text, special, add) != _hf_ids(ref, text, special, add)}
    assert all(style.differs_on(text) for text in differs) if style.differs_on else not differs, differs
    assert bool(differs) == (style.differs_on is not None)


def _is_byte_token(tok: Tokenizer, i: int) -> bool:
    piece = tok.id_to_token(i)
    return piece in BYTE_PIECES or (len(piece) == 1 and 0x100 <= ord(piece) < 0x180)  # SPM / byte-level


@pytest.mark.parametrize("name", sorted(STYLES))
def test_llama_cpp_detokenizes_like_hf(name: str, converted, texts) -> None:
    tok, path = converted(name)
    style = STYLES[name]
    tok = _as_llama_cpp_reads_it(tok)  # see LLAMA_CPP_FORCES_CONTROL
    specials = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    bad = []
    with _engine(path) as engine:
        for text in _held_out(style, texts[1]):
            for add in (True, False):
                ids = tok.encode(text, add_special_tokens=add).ids
                for special in (True, False):
                    want = tok.decode(ids, skip_special_tokens=not special)
                    got = _detokenize(engine, ids, special)
                    if style.space_prefix and not special and ids[:1] and ids[0] in specials:
                        # Known llama.cpp difference: it strips the space prefix SentencePiece added from
                        # the first token only, and that token here is a special one that renders as
                        # nothing (or a BOS it skips, which turns the stripping off), so the space stays;
                        # HF drops the special tokens first, then Strip(" ", 1, 0) removes it.
                        # llama-vocab.cpp, llama_vocab::impl::detokenize: "if (remove_special && add_bos)
                        # {... tokens[0] == special_bos_id) { remove_space = false;" and, in its loop,
                        # "token_to_piece(tokens[i], text, avail, remove_space, ...); remove_space = false;".
                        # Exactly one space differs; everything after it must agree.
                        want = " " + want
                    if style.cleans_spaces:
                        want = _llama_cpp_cleans_spaces(want)
                    if got != want:
                        bad.append((text[:40], add, special, got[:60], want[:60]))
    assert not bad, bad[:5]


def _llama_cpp_cleans_spaces(text: str) -> str:
    """Known llama.cpp difference: ``llama_detokenize`` ends with a clean-up pass for the BPE
    pre-tokenizers that do not turn ``clean_spaces`` off (llama-bpe among them: llama-vocab.cpp,
    llama_vocab::impl::load, "if (type == LLAMA_VOCAB_TYPE_BPE) { ... clean_spaces = true;"), as
    transformers' ``clean_up_tokenization_spaces`` does; HF ``tokenizers`` has no such step. Its three
    passes (llama_vocab::impl::detokenize, "if (clean_spaces) {"), on texts where they do not overlap:
    a space before ? ! . , goes; " ' " becomes "'"; a space before 's 'm 're 've goes ('t 'd 'll keep it)."""
    text = re.sub(r" ([?!.,])", r"\1", text)
    text = text.replace(" ' ", "'")
    return re.sub(r" '(s|m|re|ve)", r"'\1", text)


def test_llama_cpp_clean_up_pass_is_real_and_narrow() -> None:
    """The allowance above touches only the clean-up text of TRICKY, and changes it."""
    changed = [t for t in TRICKY if _llama_cpp_cleans_spaces(t) != t]
    assert changed == [SPACED]
    assert _llama_cpp_cleans_spaces(SPACED).endswith(": a, b. c? d! e'f'g it's we're I'm they've don 't")


@pytest.mark.parametrize("name", sorted(STYLES))
def test_engine_detokenize_is_hf_decode_skipping_special_tokens(name: str, converted, texts) -> None:
    """``Engine.detokenize`` (the serve layer's echo, the demo's token texts) is HF's
    ``decode(ids, skip_special_tokens=True)`` for every style, on every held-out text, with and without
    BOS, and with special tokens parsed out of the text. None of the allowances ``llama_detokenize``
    needs above (the BOS space, the clean-up pass) apply; only the tokens llama.cpp forces to CONTROL
    are read as special by the reference (LLAMA_CPP_FORCES_CONTROL: HF would keep Phi-3's "</s>")."""
    tok, path = converted(name)
    tok = _as_llama_cpp_reads_it(tok)
    bad = []
    n = 0
    with _engine(path) as engine:
        for text in _held_out(STYLES[name], texts[1]):
            for add in (True, False):
                ids = tok.encode(text, add_special_tokens=add).ids
                want = tok.decode(ids, skip_special_tokens=True)
                got = engine.detokenize(ids)
                n += 1
                if got != want:
                    bad.append((text[:40], add, got[:60], want[:60]))
        assert engine.detokenize([]) == ""
    assert not bad, (f"{len(bad)} of {n} differ", bad[:5])


@pytest.mark.parametrize("name", sorted(STYLES))
def test_onnx_engine_token_bytes_join_to_hf_decode(name: str, converted, texts) -> None:
    """The ONNX Runtime engine's per-token bytes (its streamed text, logprobs' ``bytes``), read from the
    same tokenizer.json, join to HF's ``decode`` with special tokens skipped, once the one SentencePiece
    prefix space HF's decoder strips is put back: non-special added tokens (Qwen's ``<tool_call>``,
    Phi-3's ``</s>``) keep their text, as llama.cpp's pieces do. HF's own view of what is special
    (the ONNX engine decodes with HF's tokenizer, so LLAMA_CPP_FORCES_CONTROL does not apply)."""
    from edgegen.runtime.ort_engine import _vocab_bytes

    tok, path = converted(name)
    style = STYLES[name]
    folder = path.parent / style.folder
    table = _vocab_bytes(folder, json.loads((folder / "tokenizer_config.json").read_text()))
    bad = []
    for text in _held_out(style, texts[1]):
        for add in (True, False):
            ids = tok.encode(text, add_special_tokens=add).ids
            joined = b"".join(table.get(i, b"") for i in ids).decode("utf-8", errors="replace")
            want = tok.decode(ids, skip_special_tokens=True)
            if style.space_prefix and joined.startswith(" "):
                want = " " + want
            if joined != want:
                bad.append((text[:40], add, joined[:60], want[:60]))
    assert not bad, bad[:5]


# ---- negative controls: the comparison fails when the converter writes the wrong style --------


def _convert_again(name: str, converted, tmp_path: Path) -> Path:
    tok, path = converted(name)
    folder = next(p for p in path.parent.iterdir() if p.is_dir())
    return convert_model(folder, tmp_path / "bad.gguf", dtype="f32")


@pytest.mark.parametrize("name, wrong", [("qwen2", "llama-bpe"), ("llama3", "qwen2")])
def test_wrong_pre_tokenizer_name_fails_the_comparison(name: str, wrong: str, converted, texts, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama 3 groups digits by three, Qwen2 splits each: swapping the names must show."""
    sig = next(k for k, v in tokenizer._BPE_PRE.items() if v == STYLES[name].pre)
    monkeypatch.setitem(tokenizer._BPE_PRE, sig, wrong)
    tok, _ = converted(name)
    with _engine(_convert_again(name, converted, tmp_path)) as engine:
        assert engine.metadata["tokenizer.ggml.pre"] == wrong
        bad = _token_mismatches(tok, engine, _held_out(STYLES[name], texts[1]))
    assert any("12345" in b[0] or "2024" in b[0] for b in bad), bad[:3]


@pytest.mark.parametrize("name", ["gemma3", "phi3"])
def test_wrong_space_prefix_fails_the_comparison(name: str, converted, texts, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3 adds no "▁" before the text, Llama 2 / Phi-3 do: flipping ``add_space_prefix`` must show."""
    right = tokenizer._spm_space_prefix
    monkeypatch.setattr(tokenizer, "_spm_space_prefix", lambda tj: not right(tj))
    tok, _ = converted(name)
    with _engine(_convert_again(name, converted, tmp_path)) as engine:
        bad = _token_mismatches(tok, engine, _held_out(STYLES[name], texts[1]))
    assert len(bad) > 10, bad[:3]


def test_special_tokens_typed_as_plain_text_fail_the_comparison(converted, texts, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Added special tokens must be CONTROL (split out only when parsing specials): as USER_DEFINED
    llama.cpp would split them out of plain text too, where HF with ``encode_special_tokens`` does not."""
    monkeypatch.setattr(tokenizer, "CONTROL", tokenizer.USER_DEFINED)
    tok, _ = converted("qwen2")
    with _engine(_convert_again("qwen2", converted, tmp_path)) as engine:
        bad = _token_mismatches(tok, engine, _held_out(STYLES["qwen2"], texts[1]))
    assert bad and all(not special for _, special, *_ in bad), bad[:3]


# ---- general.name: llama.cpp strips whitespace after added tokens by a rule on the model's name ----


def test_phi3_tokenizer_in_a_folder_not_named_phi3_needs_the_name_rule(converted, texts, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The phi3 style above converts from "checkpoint-500" and matches HF; named as the folder is,
    llama.cpp would keep the whitespace HF strips after <|end|>, <|assistant|>..."""
    tok, path = converted("phi3")
    with _engine(path) as engine:
        assert engine.metadata["general.name"] == "checkpoint-500 (phi3 tokenizer)"
    monkeypatch.setattr(tokenizer, "gguf_model_name", lambda name, vocab: name)
    with _engine(_convert_again("phi3", converted, tmp_path)) as engine:
        bad = _token_mismatches(_as_llama_cpp_reads_it(tok), engine, _held_out(STYLES["phi3"], texts[1]))
    assert bad and all(special for _, special, *_ in bad), bad[:3]  # only where the chat tokens are parsed


def test_folder_named_phi3_with_another_tokenizer_loads_and_matches(converted, texts, tmp_path: Path) -> None:
    """llama.cpp's phi3 rule looks up <unk>, <s>, </s> and <|endoftext|> and aborts the load without
    them: a Qwen-style vocabulary in a folder named "Phi-3-qwen-merge" must not get that name."""
    tok, path = converted("qwen2")
    folder = tmp_path / "Phi-3-qwen-merge"
    shutil.copytree(next(p for p in path.parent.iterdir() if p.is_dir()), folder)
    out = convert_model(folder, tmp_path / "m.gguf", dtype="f32")
    with _engine(out) as engine:
        assert engine.metadata["general.name"] == "Phi 3-qwen-merge"
        assert not _token_mismatches(tok, engine, _held_out(STYLES["qwen2"], texts[1]))


def test_gguf_model_name_follows_the_tokenizer_not_the_folder() -> None:
    from edgegen.formats.spm_model import CONTROL, NORMAL, UNKNOWN, USER_DEFINED
    from edgegen.formats.tokenizer import Vocab, gguf_model_name

    tokens = ["<unk>", "<s>", "</s>", "a", "<|endoftext|>", "<|end|>"]
    types = [UNKNOWN, CONTROL, USER_DEFINED, NORMAL, CONTROL, CONTROL]
    phi3 = Vocab("llama", tokens, types, rstrip=frozenset({"</s>", "<|end|>"}))
    assert gguf_model_name("checkpoint-500", phi3) == "checkpoint-500 (phi3 tokenizer)"
    assert gguf_model_name("Phi-3-mini-4k-instruct", phi3) == "Phi-3-mini-4k-instruct"
    plain = Vocab("llama", tokens, types)
    assert gguf_model_name("Phi-3-mini-4k-instruct", plain) == "Phi 3-mini-4k-instruct"
    assert gguf_model_name("my PHI3 merge", plain) == "my PHI 3 merge"
    assert gguf_model_name("checkpoint-500", plain) == "checkpoint-500"
    partial = Vocab("llama", tokens, types, rstrip=frozenset({"<|end|>"}))  # not the rule's set: no rename
    assert gguf_model_name("checkpoint-500", partial) == "checkpoint-500"
