"""Which LoRA adapter a request runs with: the ``base+adapter`` model naming of multi-LoRA servers.

    adapter_for(engine, model) -> DEFAULT | str
        ``"<anything>+<name>"``   the adapter loaded as ``name`` on the engine (``engine.adapters``),
        ``"<anything>+<name>@v2"``  or as ``name`` at version ``v2``; an adapter that is not loaded
                                  (or another version of it) is an ``InvalidRequestError`` (HTTP 400)
        anything else             ``DEFAULT``: the engine's default adapter (the one the device
                                  installed as its model, if any, else the bare base), whatever the
                                  previous request selected: clients that send any model name keep working
    apply_adapter(engine, choice)   select it on the engine (in the worker thread, before generating)

Several adapters loaded on one engine share its base weights: one device serves several tasks for
the RAM of one model plus a few MB per adapter. This module does not load adapters.
"""

from __future__ import annotations

from typing import Any, Final

from edgegen.errors import InvalidRequestError

__all__ = ["DEFAULT", "adapter_for", "apply_adapter"]

DEFAULT: Final = "__default__"


def adapter_for(engine: Any, model: str | None) -> str:
    adapters = getattr(engine, "adapters", None)
    if not model or "+" not in model or adapters is None:
        return DEFAULT
    requested = model.rsplit("+", 1)[1]
    name = adapters.resolve(requested)
    if name is None:
        loaded = ", ".join(adapters.names) or "none"
        raise InvalidRequestError(f"model {model!r}: no adapter {requested!r} on this server (loaded: {loaded})")
    return str(name)


def apply_adapter(engine: Any, choice: str) -> None:
    adapters = getattr(engine, "adapters", None)
    if adapters is not None:
        adapters.select(adapters.default if choice == DEFAULT else choice)
