"""The console in a real browser (Debian's Chromium driven by playwright): log in, create a staged
rollout from the form and watch its stage advance without a reload, pause and abort another
rollout, revoke a device. Screenshots of every page go to ``out/screenshots/console/`` (or
``$EDGEGEN_SCREENSHOT_DIR``).

The control plane is real (uvicorn on 127.0.0.1, SQLite, its rollout loop ticking every 0.3 s);
the devices are simulated over the real device API by a background thread (they install at once
and report healthy requests)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet2"))

from fleet2_harness import ADMIN, Registry, SimDevice, ThreadServer  # noqa: E402

from edgegen.fleet.app import create_app  # noqa: E402
from edgegen.fleet.rollout_client import RolloutClient  # noqa: E402
from edgegen.fleet.state import ControlPlaneConfig  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("EDGEGEN_SCREENSHOT_DIR", REPO / "out" / "screenshots" / "console"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (scripts/ci/chromium.sh installs it)")


class Traffic(threading.Thread):
    """Devices poll and report healthy requests until stopped."""

    def __init__(self, devices: list[SimDevice]) -> None:
        super().__init__(daemon=True)
        self.devices, self.stop = devices, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.3):
            for d in self.devices:
                try:
                    d.sync()
                    if d.active is not None:
                        d.requests(2, 0.1)
                except Exception:  # noqa: BLE001 - a revoked device is refused from then on
                    pass


@pytest.fixture()
def plane(tmp_path: Path):
    reg = Registry.create(tmp_path)
    app = create_app(ControlPlaneConfig(data_dir=tmp_path / "cp", admin_token=ADMIN, keys_dir=reg.keys.dir,
                                        rollout_interval_s=0.3))
    server = ThreadServer(app)
    client = RolloutClient(server.url, ADMIN)
    for model in ("smol", "tiny"):
        reg.publish_bytes(client, model, 1, f"{model} one".encode() * 100)
        client.release(model, 1)
        reg.publish_bytes(client, model, 2, f"{model} two".encode() * 100)
    lab = {"site": "lab"}
    devices = [SimDevice(server.url, client.enroll_token(model="smol", group="lab", labels=lab), f"edge-{i}")
               for i in range(4)]
    tiny = [SimDevice(server.url, client.enroll_token(model="tiny", group="field"), f"tiny-{i}") for i in range(2)]
    for d in tiny:
        d.http_model = "tiny"
    traffic = Traffic(devices + tiny)
    traffic.start()
    yield server, client, reg, devices, tiny
    traffic.stop.set()
    traffic.join(5)
    client.close()
    server.stop()
    app.state.fleet.engine.dispose()


def test_operator_session_in_the_console(plane) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    server, client, reg, devices, tiny = plane
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())

            def shot(name: str) -> None:
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

            # log in (a wrong token first)
            page.goto(server.url + "/")
            assert page.url.endswith("/login")
            page.fill("#token", "not-the-token")
            page.click("#login")
            assert page.locator("#login-error").inner_text() == "wrong admin token"
            page.fill("#token", ADMIN)
            shot("01-login")
            page.click("#login")
            page.wait_for_url("**/console")
            assert ADMIN not in page.url
            shot("02-overview")

            page.goto(server.url + "/console/devices")
            page.wait_for_function("document.querySelectorAll('tr.device[data-status=current]').length == 6")
            assert page.locator("tr.device").count() == 6 and "site=lab" in page.inner_text("#devices")
            shot("03-devices")
            page.goto(f"{server.url}/console/devices/{devices[0].id}")
            assert page.inner_text("#device-status") == "current"
            shot("04-device")
            page.goto(server.url + "/console/releases")
            assert page.locator("#model-smol tr.version-row").count() == 2
            page.locator("#model-smol details").first.click()
            shot("05-releases")

            # a staged rollout created from the console, watched live
            page.goto(server.url + "/console/rollouts")
            page.select_option("select[name=model]", "smol")
            page.fill("input[name=version]", "2")
            page.fill("input[name=group]", "site=lab")
            page.fill("input[name=stages]", "25,50,100")
            page.fill("input[name=bake_s]", "3")  # each stage runs >= 3 s: the page (polling every 2 s) sees it
            shot("06-rollout-form")
            page.click("#start-rollout")
            page.wait_for_url("**/console/rollouts/*")
            rid = int(page.url.rsplit("/", 1)[1])
            page.evaluate("window.__notReloaded = true")
            live = page.locator("#rollout")
            seen = set()
            for _ in range(600):
                seen.add(live.get_attribute("data-percent"))
                if live.get_attribute("data-state") == "completed":
                    break
                if live.get_attribute("data-percent") == "50" and not (SHOTS / "07-rollout-advancing.png").exists():
                    shot("07-rollout-advancing")
                page.wait_for_timeout(100)
            assert live.get_attribute("data-state") == "completed", page.inner_text("#rollout")
            assert page.evaluate("window.__notReloaded === true")  # stages moved without a page reload
            assert {"25", "50", "100"} <= seen  # every stage seen, in the same page
            assert "completed: v2 released to site=lab" in page.inner_text("#rollout-result-text")
            shot("08-rollout-completed")
            assert client.show(rid)["state"] == "completed"

            # another rollout, started through the API (as the CLI does): pause, then abort, in the console
            other = client.start("tiny", 2, "field", stages="50,100", key=reg.keys.targets_key, bake_s=3600)
            page.goto(f"{server.url}/console/rollouts/{other['id']}")
            page.click("#pause")
            page.wait_for_selector("#rollout[data-state=paused]")
            shot("09-rollout-paused")
            page.click("#abort")
            page.wait_for_selector("#rollout[data-state=aborted]")
            assert f"go to v{other['rollback_version']}" in page.inner_text("#rollout-result-text")
            shot("10-rollout-aborted")
            assert client.show(other["id"])["state"] == "aborted"

            # revoke a device from the inventory
            page.goto(server.url + "/console/devices")
            row = page.locator(f"tr.device[data-device='{tiny[1].id}']")
            row.locator("button.revoke").click()
            page.wait_for_selector(f"tr.device[data-device='{tiny[1].id}'][data-status=revoked]")
            assert next(d for d in client.devices() if d["id"] == tiny[1].id)["revoked"] is True
            # and issue an enrolment token
            page.fill("#enrol-form input[name=group]", "lab")
            page.click("#enrol-form button")
            page.wait_for_function("document.getElementById('enrol-result').textContent.startsWith('token')")
            shot("11-devices-after-revoke")
            page.goto(server.url + "/console/rollouts")
            shot("12-rollouts")
            page.goto(server.url + "/console/drift")
            shot("13-drift")
            page.goto(server.url + "/console")
            shot("14-overview-after")
        finally:
            browser.close()
