"""Reading a SentencePiece ``tokenizer.model`` without the sentencepiece package.

The file is one protobuf message (``ModelProto`` in sentencepiece_model.proto). We decode the few
fields a GGUF vocabulary needs with a ~50-line wire-format reader:

    ModelProto       1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
    SentencePiece    1: piece (string)   2: score (float)   3: type (enum, default NORMAL=1)
    TrainerSpec      3: model_type (1 unigram, 2 bpe, 3 word, 4 char)
                     40-43: unk_id, bos_id, eos_id, pad_id (int32; -1 means none)
    NormalizerSpec   1: name   3: add_dummy_prefix (default true)   4: remove_extra_whitespaces (default true)

Piece types use the same numbers as GGUF's ``tokenizer.ggml.token_type`` (NORMAL 1, UNKNOWN 2,
CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6). This module does not tokenize anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from edgegen.errors import InvalidModelError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: int = 1  # unigram unless the trainer spec says otherwise
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) for one message; LEN values are bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield num, wire, val


def _int32(v: int) -> int:
    """Protobuf encodes negative int32 as a 64-bit two's-complement varint."""
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_sentencepiece(data: bytes) -> SentencePieceModel:
    """Decode a serialized ModelProto; raise InvalidModelError if it is not one."""
    m = SentencePieceModel()
    try:
        for num, wire, val in _fields(data):
            if num == 1 and wire == 2:
                piece, score, typ = "", 0.0, NORMAL
                for n2, w2, v2 in _fields(val):
                    if n2 == 1 and w2 == 2:
                        piece = v2.decode("utf-8")
                    elif n2 == 2 and w2 == 5:
                        (score,) = struct.unpack("<f", v2)
                    elif n2 == 3 and w2 == 0:
                        typ = v2
                m.pieces.append(piece)
                m.scores.append(score)
                m.types.append(typ)
            elif num == 2 and wire == 2:
                for n2, w2, v2 in _fields(val):
                    if w2 != 0:
                        continue
                    if n2 == 3:
                        m.model_type = v2
                    elif n2 in (40, 41, 42, 43):
                        setattr(m, ("unk_id", "bos_id", "eos_id", "pad_id")[n2 - 40], _int32(v2))
            elif num == 3 and wire == 2:
                for n2, w2, v2 in _fields(val):
                    if n2 == 3 and w2 == 0:
                        m.add_dummy_prefix = bool(v2)
                    elif n2 == 4 and w2 == 0:
                        m.remove_extra_whitespaces = bool(v2)
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise InvalidModelError(f"tokenizer.model is not a SentencePiece model: {exc}") from exc
    if not m.pieces:
        raise InvalidModelError("tokenizer.model holds no pieces; it is not a SentencePiece model")
    return m
