"""Writing a GGUF file one tensor at a time, atomically.

Converters describe the output as metadata (a callback that fills a ``gguf.GGUFWriter``) plus a list
of ``PlannedTensor`` (name, shape, dtype and a function that produces the data when its turn comes).
``write_gguf`` lays out the header from the plan, then produces and writes each tensor in order, so
only one tensor is in memory at once, and reports ``progress(done, total)`` after each.

The file is written to a temporary name in the output's directory and moved over ``out`` with
``os.replace`` only when complete: whatever fails (bad input found late, a full disk, Ctrl-C),
nothing half-written is ever left at ``out``. This module knows no model architecture.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import ConversionError, OutputError

Progress = Callable[[int, int], None]  # (tensors_done, tensors_total)


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy order (rows first), as produced
    dtype: np.dtype  # float32, float16 (or an integer type copied as is)
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def prepare_output(out: Path) -> Path:
    """Check that ``out`` can be written (creating missing folders); return its resolved path."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file name such as {out / 'model.gguf'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(f"cannot write {out}: a file stands where its folder should be") from exc
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out.parent}: {exc.strerror or exc}") from exc
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {out}: {out.parent} is not a folder")
    return out


def _open_temp(out: Path) -> Path:
    """A new, empty, uniquely named file beside ``out`` (created with the user's umask, unlike mkstemp)."""
    for _ in range(100):
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
        try:
            with tmp.open("xb"):
                return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot write to {out.parent}: {exc.strerror or exc}") from exc
    raise OutputError(f"cannot find a free temporary name beside {out}")


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary file beside ``out``; on success move it over ``out``, else delete it.

    Whatever escapes the block (an error found late, a full disk, Ctrl-C), nothing half-written is
    left at ``out``; an OSError becomes one ``OutputError``.
    """
    tmp = _open_temp(out)
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_gguf(
    out: Path,
    arch: str,
    add_metadata: Callable[[Any], None],
    tensors: Sequence[PlannedTensor],
    progress: Progress | None = None,
) -> Path:
    """Write the planned GGUF to ``out`` atomically and return ``out``."""
    import gguf

    out = prepare_output(out)
    total = len(tensors)
    with atomic_output(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            add_metadata(writer)
            for t in tensors:
                writer.add_tensor_info(t.name, t.shape, np.dtype(t.dtype), t.nbytes)
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            if progress:
                progress(0, total)
            for i, t in enumerate(tensors):
                try:
                    data = np.ascontiguousarray(t.produce(), dtype=t.dtype)
                except OSError as exc:  # the source, not the output, failed
                    raise ConversionError(f"reading tensor {t.name} failed: {exc}") from exc
                if data.shape != tuple(t.shape):
                    raise ConversionError(f"tensor {t.name} came out as {data.shape}, expected {t.shape}")
                writer.write_tensor_data(data)
                del data
                if progress:
                    progress(i + 1, total)
            writer.flush()
        finally:
            writer.close()
    return out
