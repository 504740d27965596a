"""The web console (once a one-page dashboard): server-rendered pages (Jinja2) and plain
JavaScript served from here (no CDN).

    GET  /                        the console, or the login page
    GET  /login  POST /login      a form that takes the admin token and sets a session cookie
    POST /logout
    GET  /console                 overview: rollouts, telemetry charts, remote logs
    GET  /console/devices[/{id}]  inventory with labels and status; one device's detail
    GET  /console/releases        models, versions and their signed manifests
    GET  /console/rollouts[/{id}] rollouts, the create form; one rollout's stages, gates, devices
    GET  /console/drift           drift alerts
    GET  /console/static/{file}   console.js, console.css
    GET  /dashboard               old address: redirects to /console

Pages mark their live regions ``data-live``; ``console.js`` re-fetches the page every 2 s and swaps
those regions (no full reload). Actions (create, pause, resume, abort a rollout; revoke a device;
issue an enrolment token) are forms that ``console.js`` sends as JSON to the admin API the CLI
uses, authenticated by the session cookie plus an ``X-CSRF-Token`` header (``console_auth``).
"""

from __future__ import annotations

import time
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from edgegen.fleet import console, console_auth
from edgegen.fleet.auth import PlaneDep, SessionDep, secret_matches
from edgegen.fleet.dashboard import dashboard_view
from edgegen.fleet.db import utcnow

router = APIRouter(tags=["console"], include_in_schema=False)
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
POLL_MS = 2000


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=PackageLoader("edgegen.fleet", "templates"), autoescape=select_autoescape(["html"]))


def _session(request: Request, digest: str) -> str | None:
    value = request.cookies.get(console_auth.COOKIE)
    return value if console_auth.session_valid(value, digest, time.time()) else None


def _page(request: Request, plane: Any, template: str, page: str, title: str, **view: Any) -> Response:
    value = _session(request, plane.admin_token_digest)
    if value is None:
        return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)
    context = {"now": utcnow().strftime("%Y-%m-%d %H:%M:%S UTC"), **view}
    html = _env().get_template(template).render(
        **context, csrf=console_auth.csrf_token(value, plane.admin_token_digest), page=page, title=title,
        poll_ms=POLL_MS, server=str(request.base_url).rstrip("/"))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/")
def root(request: Request, plane: PlaneDep) -> Response:
    logged_in = _session(request, plane.admin_token_digest) is not None
    return RedirectResponse("/console" if logged_in else "/login", status_code=303)


@router.get("/dashboard")
def old_dashboard() -> Response:
    return RedirectResponse("/console", status_code=301)


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/console") and "//" not in target else "/console"


@router.get("/login", response_class=HTMLResponse)
def login_form(next: str = "/console", error: str = "") -> HTMLResponse:
    return HTMLResponse(_env().get_template("login.html").render(next=_safe_next(next), error=error))


@router.post("/login")
async def login(request: Request, plane: PlaneDep) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    if not token or not secret_matches(token, plane.admin_token_digest):
        error = "admin token required" if not token else "wrong admin token"
        html = _env().get_template("login.html").render(next=target, error=error)
        return HTMLResponse(html, status_code=401)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(console_auth.COOKIE, console_auth.new_session(plane.admin_token_digest, time.time()),
                    httponly=True, samesite="strict", max_age=int(console_auth.SESSION_TTL_S),
                    secure=request.url.scheme == "https")
    return resp


@router.post("/logout")
async def logout(request: Request, plane: PlaneDep) -> Response:
    value = _session(request, plane.admin_token_digest)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    if value is not None and not console_auth.csrf_valid(value, plane.admin_token_digest,
                                                         (form.get("csrf") or [""])[0]):
        raise HTTPException(403, "logout without a valid CSRF token")
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(console_auth.COOKIE)
    return resp


@router.get("/console/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    data = resources.files("edgegen.fleet").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


@router.get("/console")
def overview(request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    return _page(request, plane, "overview.html", "/console", "Overview", **dashboard_view(session, utcnow()))


@router.get("/console/devices")
def devices(request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    view = console.devices_page(session, utcnow())
    models = console.releases_page(session)["models"]
    return _page(request, plane, "devices.html", "/console/devices", "Devices", **view,
                 default_model=models[0]["name"] if models else "")


@router.get("/console/devices/{device_id}")
def device(device_id: str, request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    d = console.device_page(session, device_id, utcnow())
    if d is None:
        raise HTTPException(404, f"no device {device_id!r}")
    return _page(request, plane, "device.html", "/console/devices", d["name"] or device_id, d=d)


@router.get("/console/releases")
def releases(request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    return _page(request, plane, "releases.html", "/console/releases", "Releases", **console.releases_page(session))


@router.get("/console/rollouts")
def rollouts(request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    return _page(request, plane, "rollouts.html", "/console/rollouts", "Rollouts",
                 **console.rollouts_page(session, utcnow()))


@router.get("/console/rollouts/{rollout_id}")
def rollout(rollout_id: int, request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    r = console.rollout_page(session, rollout_id, utcnow())
    if r is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    return _page(request, plane, "rollout.html", "/console/rollouts", f"Rollout {rollout_id}", r=r)


@router.get("/console/drift")
def drift(request: Request, plane: PlaneDep, session: SessionDep) -> Response:
    return _page(request, plane, "drift.html", "/console/drift", "Drift", **console.drift_page(session, utcnow()))
