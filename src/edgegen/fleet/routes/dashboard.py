"""The dashboard: one server-rendered HTML page (Jinja2, inline SVG charts, no JavaScript, no CDN).

    GET /dashboard?token=<admin token>   checks the token, sets a session cookie, redirects to
                                         ``/dashboard`` (so the token leaves the address bar)
    GET /dashboard                       the page, for a valid cookie or ``Authorization: Bearer``
    GET /dashboard?refresh=N             the same, reloading itself every N seconds

The cookie holds an HMAC derived from the stored admin token digest, never the token itself; it
opens only this page.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from edgegen.fleet.auth import PlaneDep, SessionDep, secret_matches
from edgegen.fleet.dashboard import dashboard_view
from edgegen.fleet.db import utcnow

router = APIRouter(tags=["dashboard"])
COOKIE = "edgegen_dashboard"


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=PackageLoader("edgegen.fleet", "templates"), autoescape=select_autoescape(["html"]))


def _session_value(admin_digest: str) -> str:
    return hmac.new(admin_digest.encode(), b"edgegen-dashboard-v1", hashlib.sha256).hexdigest()


def _authorised(request: Request, admin_digest: str) -> bool:
    cookie = request.cookies.get(COOKIE)
    if cookie and hmac.compare_digest(cookie, _session_value(admin_digest)):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token) and secret_matches(token.strip(), admin_digest)


@router.get("/dashboard", response_class=HTMLResponse, response_model=None)
def dashboard(request: Request, plane: PlaneDep, session: SessionDep, token: str | None = None,
              refresh: int | None = None) -> Response:
    digest = plane.admin_token_digest
    if token is not None:
        if not secret_matches(token, digest):
            raise HTTPException(401, "wrong admin token")
        target = "/dashboard" + (f"?refresh={int(refresh)}" if refresh else "")
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(COOKIE, _session_value(digest), httponly=True, samesite="strict")
        return resp
    if not _authorised(request, digest):
        raise HTTPException(401, "open /dashboard?token=<admin token> first")
    view = dashboard_view(session, utcnow())
    html = _env().get_template("dashboard.html").render(**view, refresh=max(2, refresh) if refresh else None)
    return HTMLResponse(html)
