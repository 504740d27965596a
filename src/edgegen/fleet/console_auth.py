"""Admin sessions for the web console: a signed cookie after a login form, and a CSRF token.

    new_session(digest, now) -> str           the cookie value: ``<issued>.<hmac>``
    session_valid(value, digest, now) -> bool  signed by this control plane's admin token, not expired
    csrf_token(value, digest) -> str           what the console's forms and scripts send back in
                                               ``X-CSRF-Token`` (bound to the session)

The cookie is ``HttpOnly`` and ``SameSite=Strict`` and carries an HMAC keyed by the stored admin token
digest, never the token. A request authenticated by the cookie must also carry the CSRF token, so the
console's actions go through the admin API the CLI uses (``auth.require_admin`` accepts either a
bearer token or cookie + CSRF). Changing the admin token ends every session. Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "edgegen_console"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600.0


def _mac(digest: str, message: str) -> str:
    return hmac.new(digest.encode(), message.encode(), hashlib.sha256).hexdigest()


def new_session(digest: str, now: float) -> str:
    issued = str(int(now))
    return f"{issued}.{_mac(digest, 'console-session-v1:' + issued)}"


def session_valid(value: str | None, digest: str, now: float, ttl_s: float = SESSION_TTL_S) -> bool:
    if not value or "." not in value:
        return False
    issued, _, mac = value.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(mac, _mac(digest, "console-session-v1:" + issued)):
        return False
    return 0 <= now - int(issued) <= ttl_s


def csrf_token(value: str, digest: str) -> str:
    return _mac(digest, "console-csrf-v1:" + value)


def csrf_valid(value: str, digest: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(sent or "", csrf_token(value, digest))
