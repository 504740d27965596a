"""Reading a Hugging Face model folder without torch: its JSON files and its safetensors weights.

``read_json`` loads config.json / tokenizer.json / tokenizer_config.json with one clear error.
``index_tensors`` lists every tensor of the folder's ``*.safetensors`` files (sharded or not) as a
``TensorRef``; nothing is read until ``TensorRef.load()``, which memory-maps just that tensor, so a
conversion holds one tensor in memory at a time. The safetensors layout is simple enough to read
directly: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then raw little-endian data. BF16 is widened to F32 exactly (a 16-bit shift).

This module does not read ``pytorch_model.bin`` (pickles can run code; such folders are refused
with a clear error) and does not know what any tensor means; ``hf_arch`` does.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import InvalidModelError, UnsupportedArchitectureError

_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_MAX_HEADER = 100 * 1024 * 1024


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidModelError(f"{path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class TensorRef:
    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in ``file``
    nbytes: int

    def load(self) -> np.ndarray:
        """The tensor as a read-only array (memory-mapped); BF16 comes back as float32."""
        np_dtype = np.dtype(_NUMPY_DTYPES[self.dtype]).newbyteorder("<")
        count = int(np.prod(self.shape, dtype=np.int64))
        if count == 0:
            arr = np.zeros(self.shape, dtype=np_dtype)
        else:
            arr = np.memmap(self.file, dtype=np_dtype, mode="r", offset=self.offset, shape=(count,))
            arr = arr.reshape(self.shape)
        if self.dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def _read_header(path: Path) -> dict[str, TensorRef]:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidModelError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise InvalidModelError(f"{path} is not a safetensors file (header length {n} is impossible)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidModelError(f"{path} is not a safetensors file (bad header: {exc})") from exc
    if not isinstance(header, dict):
        raise InvalidModelError(f"{path} is not a safetensors file (header is not an object)")
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelError(f"{path}: malformed entry for tensor {name!r}") from exc
        if dtype not in _NUMPY_DTYPES:
            raise UnsupportedArchitectureError(f"{path}: tensor {name} has dtype {dtype}, which edgegen cannot read")
        itemsize = np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if end - begin != expected or begin < 0:
            raise InvalidModelError(f"{path}: tensor {name} has {end - begin} bytes, its shape needs {expected}")
        if base + end > size:
            raise InvalidModelError(f"{path} is truncated: tensor {name} ends at byte {base + end}, file has {size}")
        refs[name] = TensorRef(name, dtype, shape, path, base + begin, end - begin)
    return refs


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InvalidModelError(f"{index} has no weight_map")
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise InvalidModelError(f"{folder} is missing weight shards listed in its index: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("pytorch_model*.bin")) or any(folder.glob("*.pt")):
            raise InvalidModelError(
                f"{folder} holds only PyTorch pickle weights; re-save it as safetensors "
                "(save_pretrained(..., safe_serialization=True))"
            )
        raise InvalidModelError(f"{folder} has no *.safetensors weights")
    return files


def index_tensors(folder: Path) -> dict[str, TensorRef]:
    """Every tensor in the folder's safetensors files, by name; nothing is loaded yet."""
    refs: dict[str, TensorRef] = {}
    for path in safetensors_files(folder):
        for name, ref in _read_header(path).items():
            if name in refs:
                raise InvalidModelError(f"tensor {name} appears in both {refs[name].file.name} and {path.name}")
            refs[name] = ref
    return refs
