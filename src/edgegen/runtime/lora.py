"""LoRA adapters applied at run time to a loaded llama.cpp model, several sharing one base.

    LoraAdapters(llm)           the adapters loaded on one ``llama_cpp.Llama`` (its model and context)
        .load(name, path, scale, version=)   ``llama_adapter_lora_init`` once per adapter file: the
                                   base weights are untouched and stay memory-mapped; an adapter
                                   costs its own size (a few MB) in RAM; ``version`` (e.g. ``"v2"``)
                                   lets a request name it exactly as ``name@v2``
        .default                   the adapter a request that names none runs with (None: the bare
                                   base); ``Llama(lora_path=...)``'s adapter when loaded that way
        .resolve(requested)        ``name`` or ``name@<version>`` -> the loaded name, else None
        .select(name | None)       ``llama_set_adapters_lora`` on the context: which adapter the next
                                   generation uses (None: the bare base). Switching also drops the
                                   cached prompt prefix, whose KV entries were computed with the old
                                   adapter
        .names / .active / .close()

llama-cpp-python's own ``Llama(lora_path=...)`` turns mmap off and applies one adapter for the
model's lifetime; this module keeps mmap and lets a server pick the adapter per request, as
multi-LoRA servers do (the request's model name ``base+adapter``). Not thread-safe: like the engine,
one caller at a time. Raises ``EngineError`` for an adapter llama.cpp refuses (wrong architecture,
shapes that do not match the base: "maybe wrong base model?").
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from edgegen.errors import EngineError

__all__ = ["LoraAdapters"]


class LoraAdapters:
    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self._adapters: dict[str, tuple[Any, float]] = {}
        self._versions: dict[str, str] = {}
        self.active: str | None = None
        self.default: str | None = None

    @property
    def names(self) -> list[str]:
        return sorted(self._adapters)

    def load(self, name: str, path: Path, scale: float = 1.0, *, version: str | None = None) -> None:
        if name in self._adapters:
            raise EngineError(f"an adapter named {name!r} is already loaded")
        ptr = self._lib.llama_adapter_lora_init(self._llm._model.model, str(path).encode("utf-8"))
        if not ptr:
            raise EngineError(f"llama.cpp refused the LoRA adapter {path} (not an adapter for this base model?)")
        self._adapters[name] = (ptr, float(scale))
        if version is not None:
            self._versions[name] = version

    def labels(self) -> list[str]:
        """Every loaded adapter but the default, as a request names it: ``name@<version>`` or ``name``."""
        return [f"{n}@{self._versions[n]}" if n in self._versions else n for n in self.names if n != self.default]

    def resolve(self, requested: str) -> str | None:
        """The loaded adapter a request names: ``name``, or ``name@<version>`` when that version is the
        one loaded (a request for another version is not silently served by this one)."""
        if requested in self._adapters:
            return requested
        name, at, version = requested.partition("@")
        return name if at and name in self._adapters and self._versions.get(name) == version else None

    def select(self, name: str | None) -> None:
        if name == self.active:
            return
        ctx = self._llm._ctx.ctx
        if name is None:
            rc = self._lib.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            if name not in self._adapters:
                raise EngineError(f"no adapter {name!r} is loaded (loaded: {', '.join(self.names) or 'none'})")
            ptr, scale = self._adapters[name]
            arr = (self._lib.llama_adapter_lora_p_ctypes * 1)(ptr)
            scales = (ctypes.c_float * 1)(scale)
            rc = self._lib.llama_set_adapters_lora(ctx, arr, 1, scales)
        if rc != 0:
            raise EngineError(f"llama.cpp could not apply adapter {name!r} (error {rc})")
        self._llm.reset()  # the cached prefix was computed under the previous adapter set
        self.active = name

    def close(self) -> None:
        """Detach and free every adapter (before the model itself is freed)."""
        if self._adapters and self._llm._ctx is not None and self._llm._ctx.ctx:
            self._lib.llama_set_adapters_lora(self._llm._ctx.ctx, None, 0, None)
        for ptr, _ in self._adapters.values():
            self._lib.llama_adapter_lora_free(ptr)
        self._adapters.clear()
        self._versions.clear()
        self.active = self.default = None
