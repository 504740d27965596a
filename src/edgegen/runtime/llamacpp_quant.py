"""llama.cpp's own quantizer (``llama_model_quantize``), the anchor every edgegen compression is compared to.

``llamacpp_quantize(src, dst, "Q4_K_M")`` writes ``dst`` atomically (temp file, then rename). Types are
llama.cpp's ftype names (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, ...). This module does no
calibration and chooses nothing: it is llama.cpp's behaviour, unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgegen.errors import OutputError, QuantizationError, UserInputError
from edgegen.formats.gguf_file import validate_gguf


@contextmanager
def _quiet_fds() -> Iterator[None]:
    """Send the C library's stdout/stderr to /dev/null for the duration (Python's streams untouched)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def llamacpp_ftypes() -> list[str]:
    import llama_cpp

    return sorted(n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))


def llamacpp_quantize(src: Path, dst: Path, ftype: str, *, n_threads: int = 0) -> Path:
    import llama_cpp

    validate_gguf(src)
    name = "LLAMA_FTYPE_MOSTLY_" + ftype.upper()
    if not hasattr(llama_cpp, name):
        raise UserInputError(f"llama.cpp has no quantization type {ftype!r} (have: {', '.join(llamacpp_ftypes())})")
    dst = Path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dst.parent}: {exc.strerror}") from exc
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, name)
    params.nthread = n_threads
    with _quiet_fds():  # llama.cpp prints a line per tensor straight to stdout/stderr
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise QuantizationError(f"llama.cpp failed to quantize {src} to {ftype} (code {rc})")
    os.replace(tmp, dst)
    return dst
