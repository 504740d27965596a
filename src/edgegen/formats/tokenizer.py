"""A Hugging Face tokenizer turned into GGUF vocabulary metadata (``tokenizer.ggml.*``, chat template).

Three sources, tried in this order:

    tokenizer.json, byte-level BPE   -> ``gpt2`` model: tokens, merges, and a ``tokenizer.ggml.pre``
                                        chosen from the pre-tokenizer config (see ``bpe_pre_name``)
    tokenizer.model (SentencePiece)  -> ``llama`` model: pieces, scores and types from the protobuf
    tokenizer.json, SentencePiece-style (Metaspace / ▁ normalizer; BPE or Unigram)
                                     -> ``llama`` model; Unigram scores as given, BPE scores derived
                                        from merge ranks (a piece's score is minus the rank of the
                                        first merge that builds it: llama.cpp merges highest score
                                        first, HF lowest rank first, so the two agree)

Special tokens come from tokenizer_config.json (``bos_token``...), then config.json ids, then the
SentencePiece trainer spec; ``add_bos``/``add_eos`` from tokenizer_config.json, else from the
tokenizer.json post-processor template. The chat template from chat_template.jinja,
tokenizer_config.json or chat_template.json. Added tokens' HF strip flags (``rstrip``/``lstrip``) have no
GGUF field: llama.cpp derives them from the model's name, so ``gguf_model_name`` picks the
``general.name`` that makes llama.cpp strip where HF does. Pure apart from reading those files; it does not
tokenize text (llama.cpp does, and the tests compare it with the original tokenizer).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import InvalidModelError, UnsupportedArchitectureError
from edgegen.formats import spm_model
from edgegen.formats.hf_folder import read_json
from edgegen.formats.spm_model import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED

log = logging.getLogger(__name__)

# Split regexes of the Hugging Face tokenizers llama.cpp knows by name.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# pre-tokenizer signature -> llama.cpp pre-tokenizer name (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_*)
_BPE_PRE: dict[tuple[tuple[Any, ...], ...], str] = {
    # GPT-2's own regex inside ByteLevel.
    (("ByteLevel", True),): "gpt-2",
    # Digits split one by one, then GPT-2's regex: SmolLM/SmolLM2 (llama.cpp's "starcoder" is identical).
    (("Digits", True), ("ByteLevel", True)): "smollm",
    # Llama 3's regex (up to 3 digits per piece), then byte mapping only.
    (("Split", LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
    # Qwen2's regex (one digit per piece), then byte mapping only.
    (("Split", QWEN2_SPLIT), ("ByteLevel", False)): "qwen2",
}
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str = "default"
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | list[dict[str, str]] | None = None
    rstrip: frozenset[str] = frozenset()  # added tokens HF strips the whitespace after ("rstrip": true)
    lstrip: frozenset[str] = frozenset()  # ... and before ("lstrip": true)


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def bpe_pre_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer config; raise if it is not one we map."""
    sig: list[tuple[Any, ...]] = []
    for s in _steps(pre_tokenizer):
        kind = s.get("type")
        if kind == "ByteLevel" and not s.get("add_prefix_space", False):
            sig.append(("ByteLevel", bool(s.get("use_regex", True))))
        elif kind == "Digits":
            sig.append(("Digits", bool(s.get("individual_digits", False))))
        elif kind == "Split" and s.get("behavior", "Isolated") == "Isolated" and not s.get("invert", False):
            pattern = s.get("pattern") or {}
            sig.append(("Split", pattern.get("Regex", pattern.get("String"))))
        else:
            sig.append((kind, *sorted((k, str(v)) for k, v in s.items() if k != "type")))
    name = _BPE_PRE.get(tuple(sig))
    if name is None:
        raise UnsupportedArchitectureError(
            f"the tokenizer's pre-tokenizer {[t[0] for t in sig]} is not one edgegen maps to llama.cpp "
            f"(known: {', '.join(sorted(set(_BPE_PRE.values())))})"
        )
    return name


def _is_byte_level(tj: dict[str, Any]) -> bool:
    parts = _steps(tj.get("pre_tokenizer")) + [tj.get("decoder") or {}]
    return tj.get("model", {}).get("type") == "BPE" and any(p.get("type") == "ByteLevel" for p in parts)


def _added(tj: dict[str, Any] | None) -> dict[int, tuple[str, int]]:
    """Added tokens by id -> (content, GGUF type)."""
    out = {}
    for t in (tj or {}).get("added_tokens", []):
        out[int(t["id"])] = (t["content"], CONTROL if t.get("special") else USER_DEFINED)
    return out


def _stripped(tj: dict[str, Any] | None, side: str) -> frozenset[str]:
    return frozenset(t["content"] for t in (tj or {}).get("added_tokens", []) if t.get(side))


def _merge_pair(m: Any) -> tuple[str, str]:
    if isinstance(m, str):
        a, _, b = m.partition(" ")
        return a, b
    return m[0], m[1]


def _fill(n: int, known: dict[int, tuple[str, int]]) -> tuple[list[str], list[int]]:
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [UNUSED] * n
    for i, (text, typ) in known.items():
        tokens[i], types[i] = text, typ
    return tokens, types


def _from_byte_level_bpe(tj: dict[str, Any]) -> Vocab:
    model = tj["model"]
    known = {int(i): (t, NORMAL) for t, i in model["vocab"].items()}
    known.update(_added(tj))
    tokens, types = _fill(max(known) + 1, known)
    merges = [" ".join(_merge_pair(m)) for m in model.get("merges", [])]
    return Vocab("gpt2", tokens, types, merges=merges, pre=bpe_pre_name(tj.get("pre_tokenizer")),
                 add_space_prefix=False)


def _from_sentencepiece(data: bytes, tj: dict[str, Any] | None) -> tuple[Vocab, spm_model.SentencePieceModel]:
    sp = spm_model.parse_sentencepiece(data)
    known = {i: (p, t) for i, (p, t) in enumerate(zip(sp.pieces, sp.types))}
    extra = {i: v for i, v in _added(tj).items() if i >= len(sp.pieces)}
    known.update(extra)
    tokens, types = _fill(max(known) + 1, known)
    scores = sp.scores + [-1000.0] * (len(tokens) - len(sp.scores))
    return Vocab("llama", tokens, types, scores=scores, add_space_prefix=sp.add_dummy_prefix), sp


def _normalizers(tj: dict[str, Any]) -> list[dict[str, Any]]:
    norm = tj.get("normalizer") or {}
    return norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]


def _is_sentencepiece_style(tj: dict[str, Any]) -> bool:
    """Spaces become ▁ (Metaspace, or the older Replace(" ", "▁") normalizer), or a Unigram model."""
    if tj.get("model", {}).get("type") == "Unigram":
        return True
    if any(s.get("type") == "Metaspace" for s in _steps(tj.get("pre_tokenizer"))):
        return True
    return any(s.get("type") == "Replace" and s.get("content") == "▁" for s in _normalizers(tj))


def _spm_space_prefix(tj: dict[str, Any]) -> bool:
    for s in _steps(tj.get("pre_tokenizer")):
        if s.get("type") == "Metaspace":
            return bool(s.get("prepend_scheme", "always") != "never" and s.get("add_prefix_space", True))
    return any(s.get("type") == "Prepend" for s in _normalizers(tj))


def _from_spm_json(tj: dict[str, Any]) -> Vocab:
    model = tj["model"]
    added = _added(tj)
    if model.get("type") == "Unigram":
        pairs = model["vocab"]
        known = {i: (p, NORMAL) for i, (p, _) in enumerate(pairs)}
        score_of = {i: float(s) for i, (_, s) in enumerate(pairs)}
        unk = model.get("unk_id")
    elif model.get("type") == "BPE":
        vocab: dict[str, int] = model["vocab"]
        known = {int(i): (p, NORMAL) for p, i in vocab.items()}
        score_of = {}
        for rank, m in enumerate(model.get("merges", [])):
            a, b = _merge_pair(m)
            tid = vocab.get(a + b)
            if tid is not None and tid not in score_of:
                score_of[tid] = -float(rank)
        unk = vocab.get(model.get("unk_token") or "<unk>")
    else:
        raise UnsupportedArchitectureError(f"tokenizer.json model type {model.get('type')!r} is not supported")
    known.update(added)
    tokens, types = _fill(max(known) + 1, known)
    floor = -float(len(tokens) + len(score_of))
    scores = [score_of.get(i, floor - i) for i in range(len(tokens))]
    for i, t in enumerate(tokens):
        if types[i] == NORMAL and _BYTE_PIECE.fullmatch(t):
            types[i] = BYTE
        if types[i] != NORMAL:
            scores[i] = 0.0
    if unk is not None and 0 <= unk < len(types):
        types[unk] = UNKNOWN
    return Vocab("llama", tokens, types, scores=scores, add_space_prefix=_spm_space_prefix(tj))


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _special_ids(vocab: Vocab, tc: dict[str, Any], cfg: dict[str, Any], sp: spm_model.SentencePieceModel | None):
    index = {t: i for i, t in enumerate(vocab.tokens) if vocab.types[i] != UNUSED}
    ids: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        text = _token_text(tc.get(f"{role}_token"))
        cid = cfg.get(f"{role}_token_id")
        cid = cid[0] if isinstance(cid, list) and cid else cid
        if text is not None and text in index:
            ids[role] = index[text]
        elif isinstance(cid, int) and 0 <= cid < len(vocab.tokens):
            ids[role] = cid
        elif sp is not None and 0 <= getattr(sp, f"{role}_id") < len(vocab.tokens):
            ids[role] = getattr(sp, f"{role}_id")
    return ids


def _template_flags(
    tj: dict[str, Any] | None, tokens: list[str], ids: dict[str, int]
) -> tuple[bool | None, bool | None]:
    """(add_bos, add_eos) as the tokenizer.json post-processor does it; None where it does not say."""
    post = (tj or {}).get("post_processor")
    if not post:
        return None, None
    procs = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            first = single[0].get("SpecialToken", {}).get("id") if single else None
            last = single[-1].get("SpecialToken", {}).get("id") if single else None
            bos = tokens[ids["bos"]] if "bos" in ids else None
            eos = tokens[ids["eos"]] if "eos" in ids else None
            return first is not None and first == bos, last is not None and last == eos
    return False, False


def _chat_template(folder: Path, tc: dict[str, Any]) -> str | list[dict[str, str]] | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    if tc.get("chat_template"):
        return tc["chat_template"]
    cj = folder / "chat_template.json"
    if cj.exists():
        return read_json(cj).get("chat_template")
    return None


def load_vocab(folder: Path, cfg: dict[str, Any], n_vocab: int) -> Vocab:
    """The folder's tokenizer as GGUF vocabulary, padded to the model's ``n_vocab`` embedding rows."""
    tj_path, spm_path, tc_path = folder / "tokenizer.json", folder / "tokenizer.model", folder / "tokenizer_config.json"
    tj = read_json(tj_path) if tj_path.exists() else None
    tc = read_json(tc_path) if tc_path.exists() else {}
    sp = None
    try:
        if tj is not None and _is_byte_level(tj):
            vocab = _from_byte_level_bpe(tj)
        elif spm_path.exists():
            try:
                vocab, sp = _from_sentencepiece(spm_path.read_bytes(), tj)
            except InvalidModelError as exc:
                raise InvalidModelError(f"{folder}: {exc}") from exc
        elif tj is not None and _is_sentencepiece_style(tj):
            vocab = _from_spm_json(tj)
        elif tj is not None:
            raise UnsupportedArchitectureError(
                f"{tj_path} is neither a byte-level BPE nor a SentencePiece-style tokenizer; edgegen cannot map it"
            )
        else:
            raise InvalidModelError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model)")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InvalidModelError(f"{folder}: the tokenizer files are malformed ({exc!r})") from exc
    if len(vocab.tokens) > n_vocab:
        raise InvalidModelError(f"the tokenizer has {len(vocab.tokens)} tokens but the model only {n_vocab} embeddings")
    pad = n_vocab - len(vocab.tokens)
    vocab.tokens += [f"[PAD{i}]" for i in range(len(vocab.tokens), n_vocab)]
    vocab.types += [UNUSED] * pad
    if vocab.scores is not None:
        vocab.scores += [-1000.0] * pad
    vocab.special_ids = _special_ids(vocab, tc, cfg, sp)
    bos_t, eos_t = _template_flags(tj, vocab.tokens, vocab.special_ids)
    default_bos = vocab.model == "llama"
    add_bos, add_eos = tc.get("add_bos_token"), tc.get("add_eos_token")
    vocab.add_bos = bool(add_bos) if isinstance(add_bos, bool) else (bos_t if bos_t is not None else default_bos)
    vocab.add_eos = bool(add_eos) if isinstance(add_eos, bool) else bool(eos_t)
    vocab.chat_template = _chat_template(folder, tc)
    vocab.rstrip, vocab.lstrip = _stripped(tj, "rstrip"), _stripped(tj, "lstrip")
    return vocab


# llama.cpp stores no per-token strip flags in GGUF: it sets them by a rule on ``general.name``
# (llama-vocab.cpp, llama_vocab::impl::load, "set attributes by model/tokenizer/architecture name"):
# a name containing "phi-3" or "phi3" (any case) gives RSTRIP to every CONTROL, USER_DEFINED and
# UNKNOWN token and to "</s>", then takes it off "<unk>", "<s>" and "<|endoftext|>"; it looks these
# four up with ``token_to_id.at``, so a vocabulary missing one of them fails to load under such a name.
_PHI3_NAME = re.compile(r"(phi)-?3", re.IGNORECASE)
_PHI3_UNSTRIPPED = ("<unk>", "<s>", "<|endoftext|>")


def _phi3_rule(vocab: Vocab) -> frozenset[str] | None:
    """The tokens llama.cpp's phi3 name rule strips after; None where that rule would fail to load."""
    present = set(vocab.tokens)
    if not all(t in present for t in _PHI3_UNSTRIPPED + ("</s>",)):
        return None
    special = (CONTROL, USER_DEFINED, UNKNOWN)
    return frozenset(t for t, ty in zip(vocab.tokens, vocab.types) if ty in special) - set(_PHI3_UNSTRIPPED) | {"</s>"}


def gguf_model_name(name: str, vocab: Vocab) -> str:
    """``general.name`` for ``vocab``'s GGUF: ``name``, changed where llama.cpp's name rule (above) would
    otherwise strip whitespace after other tokens than the HF tokenizer does, or fail to load.

    A Phi-3-style vocabulary (HF strips after exactly the rule's tokens) gets " (phi3 tokenizer)" appended
    when ``name`` does not already say phi3 (a fine-tune saved as "checkpoint-500"); a name that says
    phi3 over any other vocabulary has it written "phi 3", which the rule does not match. Strip flags
    llama.cpp cannot reproduce either way are logged, not refused: only text next to those tokens differs.
    """
    says_phi3 = _PHI3_NAME.search(name) is not None
    rule = _phi3_rule(vocab)
    phi3_style = rule is not None and vocab.rstrip == rule and not vocab.lstrip
    if phi3_style and not says_phi3:
        log.info("named the GGUF %r so llama.cpp strips whitespace after %s as the tokenizer does",
                 name + " (phi3 tokenizer)", ", ".join(sorted(rule or ())))
        return f"{name} (phi3 tokenizer)"
    if says_phi3 and not phi3_style:
        renamed = _PHI3_NAME.sub(r"\1 3", name)
        log.info("named the GGUF %r: llama.cpp applies Phi-3's token stripping to names that say phi3, "
                 "and this tokenizer is not Phi-3's", renamed)
        name = renamed
    if (vocab.rstrip or vocab.lstrip) and not phi3_style:
        log.warning("llama.cpp cannot strip whitespace around %s as the tokenizer does; text next to these "
                    "tokens may tokenize differently", ", ".join(sorted(vocab.rstrip | vocab.lstrip)))
    return name


def write_vocab(writer: Any, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for role, tid in vocab.special_ids.items():
        setters[role](tid)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
