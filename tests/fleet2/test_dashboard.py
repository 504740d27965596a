"""The console: server-rendered HTML from the real control plane, checked over HTTP and in a real
headless Chromium (Debian's, driven by playwright; skipped with a message when it is not installed).
Its actions are exercised in the browser by tests/operator/test_console_browser.py."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer

from edgegen.fleet.app import create_app
from edgegen.fleet.charts import Series, line_chart, minute_series, p95
from edgegen.fleet.rollout_client import RolloutClient
from edgegen.fleet.state import ControlPlaneConfig
from edgegen.telemetry.events import Batch, Event, TelemetryKind

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dash")
    reg = Registry.create(root)
    app = create_app(ControlPlaneConfig(data_dir=root / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir))
    app.state.fleet.config.rollout_interval_s = 0  # no background loop: the test ticks explicitly
    server = ThreadServer(app)
    client = RolloutClient(server.url, ADMIN)
    reg.publish_bytes(client, "smol", 1, b"one" * 100)
    client.release("smol", 1)
    devices = [SimDevice(server.url, client.enroll_token(model="smol", group="lab"), f"edge-{i}") for i in range(4)]
    for d in devices:
        d.sync()
        d.requests(5, 0.15)
    reg.publish_bytes(client, "smol", 2, b"two" * 100)
    r = client.start("smol", 2, "lab", stages="25,50,100", gates=["error_rate<0.5@1"], key=reg.keys.targets_key)
    for d in devices:
        d.sync()
        d.requests(5, 0.3)
    client.tick()  # 25% -> 50%
    for d in devices:
        d.sync()
    drifting = devices[0]
    drifting.seq += 1
    body = {"drift": True, "model_version": drifting.active, "window": 3,
            "reasons": "letters: JS 0.0400 bits > 0.02"}
    drifting.http.post("/v1/telemetry", json=Batch("sim" + drifting.id[:8], (
        Event(drifting.seq, time.time(), TelemetryKind.DRIFT, body),)).to_json()).raise_for_status()
    yield server, client, devices, r["id"]
    client.close()
    server.stop()


def test_charts_are_self_contained_svg() -> None:
    svg = line_chart("p95 <latency>", [Series("v1", (1.0, None, 3.0, 4.0)), Series("v2", (None, 2.0, None, None))],
                     unit=" ms", chart_id="c")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "&lt;latency&gt;" in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert svg.count('class="series"') == 1 and svg.count("<circle") == 2  # gaps split lines; lone points are dots
    assert "no data yet" in line_chart("empty", [Series("v1", (None, None))])
    assert minute_series([(0.0, 1.0), (30.0, 1.0), (61.0, 1.0), (200.0, 1.0)], 0.0, 3) == (2.0, 1.0, 0.0)
    assert minute_series([(5.0, 10.0), (6.0, 30.0)], 0.0, 2, p95) == (30.0, None)


@contextlib.contextmanager
def login(server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.url, follow_redirects=True) as c:
        page = c.post("/login", data={"token": ADMIN, "next": "/console"})
        assert page.status_code == 200 and str(page.url).endswith("/console")
        yield c


def test_console_requires_a_login_and_says_wrong_token(fleet) -> None:
    server, *_ = fleet
    root = httpx.get(server.url + "/", follow_redirects=True)
    assert root.status_code == 200 and str(root.url).endswith("/login")  # `/` is not a 404
    assert httpx.get(server.url + "/console").headers["location"].startswith("/login")
    wrong = httpx.post(server.url + "/login", data={"token": "wrong"})
    assert wrong.status_code == 401 and "wrong admin token" in wrong.text
    assert "admin token required" in httpx.post(server.url + "/login", data={"token": ""}).text
    with login(server) as c:
        assert c.get("/console").status_code == 200  # the cookie carries the session
        assert ADMIN not in c.cookies.get("edgegen_console", "")
        assert "token" not in str(c.get("/").url)


def test_console_actions_need_the_csrf_token(fleet) -> None:
    server, *_ = fleet
    with login(server) as c:
        html = c.get("/console/devices").text
        csrf = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        # the cookie alone (what a cross-site form would carry) is refused
        assert c.post("/v1/admin/enroll-tokens", json={"model": "smol"}).status_code == 403
        assert c.post("/v1/admin/enroll-tokens", json={"model": "smol"},
                      headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        ok = c.post("/v1/admin/enroll-tokens", json={"model": "smol"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 201 and ok.json()["token"]
    # the API tells a wrong token from a missing one
    assert httpx.get(server.url + "/v1/admin/devices").json()["detail"] == "admin token required"
    assert httpx.get(server.url + "/v1/admin/devices",
                     headers={"Authorization": "Bearer nope"}).json()["detail"] == "wrong admin token"


def test_console_needs_no_cdn(fleet) -> None:
    server, *_ = fleet
    with login(server) as c:
        for page in ("/console", "/console/devices", "/console/releases", "/console/rollouts", "/console/drift"):
            html = c.get(page).text
            assert "cdn" not in html.lower() and "https://" not in html, page
        assert c.get("/console/static/console.js").status_code == 200
    assert httpx.get(server.url + "/docs").status_code == 404  # Swagger UI would load from a CDN


def test_dashboard_html_shows_fleet_state(fleet) -> None:
    server, client, devices, rid = fleet
    with login(server) as c:
        html = c.get("/console").text
        assert f'id="rollout-{rid}" data-state="running" data-percent="50"' in html
        assert html.count('class="stage current"') == 1 and "50% &middot; 2" in html
        assert 'id="chart-requests"' in html and 'class="series"' in html
        inv = c.get("/console/devices").text
        for d in devices:
            assert d.id in inv
        assert "letters: JS 0.0400 bits" in c.get("/console/drift").text


@pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (scripts/ci/chromium.sh installs it)")
def test_headless_chromium_sees_devices_stage_and_chart(fleet) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    server, client, devices, rid = fleet
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/")
            page.fill("#token", ADMIN)
            page.click("#login")
            page.wait_for_url("**/console")
            page.goto(f"{server.url}/console/devices")
            rows = page.locator("tr.device")
            assert rows.count() == len(devices)
            shown = {rows.nth(i).get_attribute("data-device") for i in range(rows.count())}
            assert shown == {d.id for d in devices}
            assert page.locator("tr.device .pill.online").count() == len(devices)
            page.goto(f"{server.url}/console")
            rollout = page.locator(f"#rollout-{rid}")
            assert rollout.get_attribute("data-state") == "running"
            assert rollout.locator(".stage-label").inner_text() == "stage 50%"
            assert rollout.locator(".stage.current").inner_text().startswith("50%")
            chart = page.locator("svg#chart-requests")
            assert chart.is_visible()
            box = chart.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 50
            assert chart.locator("polyline.series, circle").count() >= 1
            page.goto(f"{server.url}/console/drift")
            assert page.locator("tr.drift-alert").count() == 1
        finally:
            browser.close()
