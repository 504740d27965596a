"""API keys: ``Authorization: Bearer KEY``, as OpenAI clients send it.

With no keys configured every request is allowed (a device serving only its own loopback). With
keys, a request must carry one of them; the comparison is constant-time and checks every key, so
timing says nothing about which key or how much of it matched. Keys are never logged.

This module does not issue, store or rotate keys; the server decides which routes need one.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable


class ApiKeys:
    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = tuple(k.encode("utf-8") for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        presented = bearer_token(authorization)
        if presented is None:
            return False
        given = presented.encode("utf-8", errors="surrogateescape")
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        return ok


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
