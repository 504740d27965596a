"""HTTP routes of the control plane, one module per concern.

Every module in this package that defines a module-level ``router`` (a FastAPI ``APIRouter``) is
included by ``create_app`` in name order, so a new concern (Fleet II: rollouts, telemetry, dashboard)
is added by dropping a file here; no other file changes. ``ROUTER_ORDER`` puts Fleet I's first.
"""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter

ROUTER_ORDER = ("system", "enroll", "device", "admin")


def discover_routers() -> list[APIRouter]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    names.sort(key=lambda n: (ROUTER_ORDER.index(n) if n in ROUTER_ORDER else len(ROUTER_ORDER), n))
    routers = []
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            routers.append(router)
    return routers
