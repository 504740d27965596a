"""Which LoRA adapter a request runs with: the ``base+adapter`` model naming of multi-LoRA servers.

    adapter_for(engine, model) -> KEEP | str | None
        ``"<anything>+<name>"``   the adapter loaded as ``name`` on the engine (``engine.adapters``);
                                  an adapter that is not loaded is an ``InvalidRequestError`` (HTTP 400)
        anything else             ``KEEP``: the engine's current selection (the adapter the device
                                  installed, if any): clients that send any model name keep working
    apply_adapter(engine, choice)   select it on the engine (in the worker thread, before generating)

Several adapters loaded on one engine share its base weights: one device serves several tasks for
the RAM of one model plus a few MB per adapter. This module does not load adapters.
"""

from __future__ import annotations

from typing import Any, Final

from edgegen.errors import InvalidRequestError

__all__ = ["KEEP", "adapter_for", "apply_adapter"]

KEEP: Final = "__keep__"


def adapter_for(engine: Any, model: str | None) -> str | None:
    adapters = getattr(engine, "adapters", None)
    if not model or "+" not in model or adapters is None:
        return KEEP
    name = model.rsplit("+", 1)[1]
    if name not in adapters.names:
        loaded = ", ".join(adapters.names) or "none"
        raise InvalidRequestError(f"model {model!r}: no adapter {name!r} on this server (loaded: {loaded})")
    return name


def apply_adapter(engine: Any, choice: str | None) -> None:
    if choice != KEEP:
        engine.adapters.select(choice)
