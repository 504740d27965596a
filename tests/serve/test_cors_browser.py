"""A browser page on another origin calls the server: headless Chromium (Debian's, driven by playwright;
skipped with a message when it is not installed) loads a page from a second loopback server and fetches
/v1/chat/completions (with an Authorization header, so the browser sends a CORS preflight first). The
allowed origin gets its answer, streamed too; a page from an origin not on the list is blocked by the
browser."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.serve.kit import KEY, free_port, running

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><pre id="stream">pending</pre><script>
const api = "%(api)s";
const headers = {"Authorization": "Bearer %(key)s", "Content-Type": "application/json"};
const body = {messages: [{role: "user", content: "Once upon a time"}], max_tokens: 6, temperature: 0};
fetch(api + "/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)})
  .then(r => r.json().then(j => { document.getElementById("out").textContent =
      "ok " + r.status + " " + r.headers.get("x-edgegen-route") + " " + j.choices[0].message.content; }))
  .catch(e => { document.getElementById("out").textContent = "blocked " + e; });
fetch(api + "/v1/chat/completions", {method: "POST", headers, body: JSON.stringify({...body, stream: true})})
  .then(r => r.text()).then(t => { document.getElementById("stream").textContent =
      "ok " + (t.trim().endsWith("data: [DONE]") ? "done" : "cut"); })
  .catch(e => { document.getElementById("stream").textContent = "blocked " + e; });
</script></body></html>"""


@contextmanager
def page_server(html: str, port: int | None = None) -> Iterator[str]:
    """Serve ``html`` at / on 127.0.0.1 (``port``, default a free one): a page of another origin."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (scripts/ci/chromium.sh installs it)")
def test_page_on_another_origin_calls_the_server(stories_gguf: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    allowed_port = free_port()
    allowed = f"http://127.0.0.1:{allowed_port}"
    with running(stories_gguf, n_ctx=128, model_id="stories", cors_origins=(allowed,)) as srv:
        html = PAGE % {"api": srv.url, "key": KEY}
        with page_server(html) as other, playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
            try:
                # the allowed origin: the page server bound to the port the server allows
                ok_page = browser.new_page()
                with page_server(html, allowed_port):
                    ok_page.goto(allowed + "/")
                    ok_page.wait_for_function("document.getElementById('out').textContent !== 'pending' && "
                                              "document.getElementById('stream').textContent !== 'pending'",
                                              timeout=60_000)
                    out = ok_page.locator("#out").inner_text()
                    assert out.startswith("ok 200 local "), out
                    assert ok_page.locator("#stream").inner_text() == "ok done"
                # an origin not on the list: the browser blocks the call
                bad = browser.new_page()
                bad.goto(other + "/")
                bad.wait_for_function("document.getElementById('out').textContent !== 'pending'", timeout=60_000)
                assert bad.locator("#out").inner_text().startswith("blocked")
            finally:
                browser.close()
