"""A page of another origin cannot make a browser reload the exporter's configuration,
even with ``--web.enable-lifecycle`` on (the live exporter has it): real headless Chromium
submitting a form and sending a no-cors fetch, as a malicious page would."""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from playwright.sync_api import Browser

from ..prometheus_harness import http
from .conftest import Live, ThreadServer

pytestmark = pytest.mark.browser

ATTACK = """<!doctype html><html><body>
<form method="post" action="{target}"><input name="reload" value="please"></form>
<script>
  if (location.hash === "#fetch") {{
    fetch("{target}", {{method: "POST", mode: "no-cors", body: "reload"}});
  }} else {{
    document.forms[0].submit();
  }}
</script></body></html>"""


def reload_stamp(live: Live) -> str:
    status, body = http(f"{live.url}/metrics")
    assert status == 200
    found = re.search(rb"^fleet_exporter_config_last_reload_success_timestamp_seconds (\S+)$",
                      body, re.M)  # fmt: skip
    assert found, body[:300]
    return found.group(1).decode()


@pytest.fixture(scope="module")
def attacker(live: Live):
    """A page on another port of this machine: reached as localhost it is cross-site to
    the exporter at 127.0.0.1, as 127.0.0.1 it is same-site but another origin."""

    async def make_app() -> web.Application:
        async def page(request: web.Request) -> web.Response:
            html = ATTACK.format(target=f"{live.url}/-/reload")
            return web.Response(text=html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        return app

    server = ThreadServer(make_app)
    url = server.start()
    yield url
    server.stop()


@pytest.mark.parametrize(
    ("host", "how", "site"),
    [
        ("localhost", "form", "cross-site"),
        ("127.0.0.1", "form", "same-site"),
        ("localhost", "fetch", "cross-site"),
    ],
)
def test_a_page_of_another_origin_cannot_reload(
    browser: Browser, live: Live, attacker: str, host: str, how: str, site: str
):
    before = reload_stamp(live)
    page_url = attacker.replace("127.0.0.1", host) + ("/#fetch" if how == "fetch" else "/")
    context = browser.new_context()
    try:
        page = context.new_page()
        with page.expect_response(lambda r: r.url.endswith("/-/reload"), timeout=15000) as got:
            page.goto(page_url)
        response = got.value
        sent = response.request.all_headers()
        assert response.status == 403, sent
        if how == "form":  # Playwright sees a fetch's headers before the network adds these
            assert sent["sec-fetch-site"] == site and sent["origin"] == page_url.rstrip("/")
            assert sent["content-type"] == "application/x-www-form-urlencoded"
            assert response.text().startswith(
                f"Forbidden: cross-origin request refused (Sec-Fetch-Site is {site})"
            )
        else:
            assert sent["content-type"] == "text/plain;charset=UTF-8"
    finally:
        context.close()
    assert reload_stamp(live) == before, "the configuration was reloaded"
    assert http(f"{live.url}/-/reload", method="POST", timeout=30)[0] == 200  # a script may
