"""Browser fixtures: headless Debian Chromium driven by Playwright's sync API, the real
exporter (``fleet-exporter serve``) over a simulated fleet, and a 500-cluster stand-in.

The sync API cannot share a process with pytest-asyncio tests once it has run, so these
tests are marked ``browser`` and run in their own pytest invocation (see the Makefile).
Never ``playwright install``: Chromium comes from apt (/usr/bin/chromium).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from playwright.sync_api import Browser, Page, sync_playwright

from fleet_exporter.web import FLEET, pages
from fleet_exporter.web.app import security_headers

from ..prometheus_harness import free_port, http, poll, stop_process
from .simfleet import HOSTILE
from .standin import standin_fleet

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
HOSTILE_LABEL = '"><img src=x onerror=alert(1)>'
FLEET_YAML = f"""
defaults:
  cache_ttl: 10m        # the data must not expire while the tests look at it
  max_staleness: 1h
clusters:
  {HOSTILE}:
    labels: {{team: {json.dumps(HOSTILE_LABEL)}}}
"""


@dataclass
class Live:
    """The real exporter over the simulated fleet, every cluster probed once."""

    url: str
    clusters: Path
    log: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def api(self, path: str = "") -> dict:
        status, body = http(f"{self.url}/api/clusters{path}")
        assert status == 200, body
        return json.loads(body)

    def reload(self) -> None:
        status, body = http(f"{self.url}/-/reload", method="POST", timeout=30)
        assert status == 200, body


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    clusters = tmp / "clusters"
    log = tmp / "exporter.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = subprocess.Popen(
        [sys.executable, "-m", "tests.browser.simfleet", "--kubeconfig-dir", str(clusters)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    procs = [sim]
    try:
        assert sim.stdout is not None
        ready, _, _ = select.select([sim.stdout], [], [], 60)  # no hang if it never speaks
        line = sim.stdout.readline() if ready else ""
        assert line.startswith("READY"), f"simulator did not start: {line!r}"
        (clusters / "fleet.yaml").write_text(FLEET_YAML)
        (clusters / "broken-config.yaml").write_text("this: [is not a kubeconfig")
        port = free_port()
        serve = [sys.executable, "-m", "fleet_exporter.cli", "serve", "--clusters", str(clusters)]
        with log.open("w") as out:
            exporter = subprocess.Popen(
                [*serve, "--listen", f"127.0.0.1:{port}", "--web.enable-lifecycle"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        procs.append(exporter)
        url = f"http://127.0.0.1:{port}"

        def alive(what: str) -> None:
            if exporter.poll() is not None:
                raise AssertionError(f"exporter exited before {what}:\n{log.read_text()}")

        poll(lambda: http(f"{url}/-/ready")[0] == 200, 30, "exporter ready", alive=alive)
        names = [c["name"] for c in json.loads(http(f"{url}/api/clusters")[1])["clusters"]]
        with ThreadPoolExecutor(8) as pool:  # what Prometheus would do
            list(pool.map(lambda n: http(f"{url}/probe?cluster={n}", timeout=30), names))
        yield Live(url, clusters, log, procs)
    finally:
        for p in reversed(procs):
            stop_process(p)
        if sim.stdout is not None:
            sim.stdout.close()


class ThreadServer:
    """An aiohttp app on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, make_app: Callable[[], object]):
        self.make_app = make_app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def start(self) -> str:
        self.thread.start()

        async def up() -> int:
            self.runner = web.AppRunner(await self.make_app())
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        port = asyncio.run_coroutine_threadsafe(up(), self.loop).result(60)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def standin_url(tmp_path_factory) -> Iterator[str]:
    """Only the pages, over 500 stand-in clusters (no API server behind them)."""
    tmp = tmp_path_factory.mktemp("standin")

    async def make_app() -> web.Application:
        app = web.Application(middlewares=[security_headers])
        app[FLEET] = await standin_fleet(tmp, 500)
        pages.setup(app)
        return app

    server = ThreadServer(make_app)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (never playwright install)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Watched:
    """A page and what went wrong on it: console errors (CSP violations land there),
    uncaught exceptions, and dialogs (an ``alert`` means injected script ran)."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    w = Watched(page)
    page.on("console", lambda m: m.type == "error" and w.errors.append(m.text))
    page.on("pageerror", lambda e: w.errors.append(f"uncaught: {e}"))

    def on_dialog(d) -> None:
        w.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    yield w
    context.close()
    assert w.dialogs == [], "a dialog opened: injected script ran"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
