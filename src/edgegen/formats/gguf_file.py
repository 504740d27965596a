"""Reading GGUF files safely: validation with one clear error, and a summary of what is inside.

``validate_gguf`` checks the magic, version and that every tensor's data lies inside the file, so a
truncated download is refused before llama.cpp sees it. ``describe`` summarises architecture,
parameters, bits per weight and the tensor-type mix. Writing GGUF lives in ``convert``/``compress``.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import InvalidModelError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"


def read_per_token(name: str, names: set[str]) -> bool:
    """Whether decoding reads tensor ``name`` at every token, given all tensor names of the file: all do
    but the token embedding, which is only looked up unless it doubles as the (absent) output matrix."""
    if name == "token_embd.weight":
        return "output.weight" not in names
    return True


def validate_gguf(path: Path):  # -> gguf.GGUFReader
    """Raise a UserInputError subclass unless ``path`` is a complete GGUF file; return its reader."""
    if not path.exists():
        raise ModelNotFoundError(f"model not found: {path}")
    if path.is_dir():
        raise InvalidModelError(f"{path} is a folder; a GGUF file is needed here (convert it first)")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise InvalidModelError(f"{path} is not a GGUF file (bad magic)")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise InvalidModelError(f"{path}: unsupported GGUF version {version}")
    reader = open_reader(path)
    size = path.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise InvalidModelError(f"{path} is truncated: tensor {t.name} ends at byte {end}, file has {size}")
    return reader


def context_length(reader) -> int | None:
    """The training context length recorded in the file (``<arch>.context_length``), if any."""
    arch = field_value(reader, "general.architecture")
    value = field_value(reader, f"{arch}.context_length") if arch else None
    return int(value) if value is not None else None


def open_reader(path: Path):  # -> gguf.GGUFReader
    """Open with gguf-py, translating its errors (truncation, bad header) into InvalidModelError."""
    from edgegen.formats.gguf_reader_fast import PlainViewGGUFReader

    try:
        return PlainViewGGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, struct.error, OSError) as exc:
        raise InvalidModelError(f"{path} is not a readable GGUF file (truncated or corrupt)") from exc


def field_value(reader, key: str, default=None):
    """A scalar or string metadata value, or ``default``."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    architecture: str
    file_bytes: int
    n_params: int
    tensor_bytes: int
    types: dict[str, int]  # quant type name -> parameter count

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / max(1, self.n_params)


def describe(path: Path) -> GGUFSummary:
    validate_gguf(path)
    reader = open_reader(path)
    n_params = 0
    tensor_bytes = 0
    types: Counter[str] = Counter()
    for t in reader.tensors:
        n = int(np.prod(t.shape))
        n_params += n
        tensor_bytes += int(t.n_bytes)
        types[t.tensor_type.name] += n
    return GGUFSummary(
        path=path,
        architecture=str(field_value(reader, "general.architecture", "unknown")),
        file_bytes=path.stat().st_size,
        n_params=n_params,
        tensor_bytes=tensor_bytes,
        types=dict(types),
    )
