"""Shared fixtures: a simulated fleet on real TLS sockets and the real exporter in front."""

from __future__ import annotations

import asyncio
import io
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from fleet_exporter.fleet import Fleet
from fleet_exporter.web.app import create_app
from simulator.fleet import ClusterSpec
from simulator.server import SimulatedFleet

SHARED = Path(__file__).resolve().parents[2] / "shared"


def small_fleet_specs() -> list[ClusterSpec]:
    """Four clusters that cover the main shapes of health, small enough to be fast."""
    return [
        ClusterSpec(name="alpha", volumes=6, nodes=3, seed=1),
        ClusterSpec(name="beta", volumes=8, nodes=3, degraded_volumes=2, faulted_volumes=1, seed=2),
        ClusterSpec(name="gamma", volumes=5, nodes=3, seed=3, faults={"snapshots": "403"}),
        ClusterSpec(name="delta", volumes=4, nodes=2, seed=4),
    ]


@dataclass
class Env:
    sim: SimulatedFleet
    fleet: Fleet
    url: str
    clusters: Path
    session: aiohttp.ClientSession

    async def get(self, path: str, **kw) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
        async with self.session.get(self.url + path, **kw) as r:
            return r.status, await r.text(), r.headers

    async def probe(self, cluster: str, **kw) -> tuple[int, dict[str, dict], str]:
        """Status, samples by (name, labels) → value, raw text."""
        status, text, _ = await self.get(f"/probe?cluster={cluster}", **kw)
        return status, samples(text) if status == 200 else {}, text

    def upstream_requests(self) -> int:
        return sum(self.sim.requests(name) for name in self.sim.names())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp: dict, name: str, **labels: str) -> float | None:
    """The value of the one sample named ``name`` whose labels include ``labels``."""
    found = [v for (n, lbl), v in smp.items() if n == name and labels.items() <= dict(lbl).items()]
    if len(found) > 1:
        raise AssertionError(f"{name}{labels} matches {len(found)} samples")
    return found[0] if found else None


def gunzip_all(data: bytes) -> bytes:
    """Decode every gzip member, as Go's gzip reader does by default (multistream)."""
    out = io.BytesIO()
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.write(d.decompress(data))
        data = d.unused_data
    return out.getvalue()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[Env]:
    async with started_env(tmp_path, small_fleet_specs()) as e:
        yield e


class started_env:
    """Simulator + exporter on 127.0.0.1 ports; kubeconfigs in ``tmp_path/clusters``."""

    def __init__(
        self,
        tmp_path: Path,
        specs: list[ClusterSpec],
        fleet_yaml: str | None = None,
        *,
        enable_lifecycle: bool = False,
        **sim_options,
    ):
        self.tmp_path, self.specs, self.fleet_yaml = tmp_path, specs, fleet_yaml
        self.enable_lifecycle = enable_lifecycle
        self.sim_options = sim_options

    async def __aenter__(self) -> Env:
        clusters = self.tmp_path / "clusters"
        clusters.mkdir()
        self.sim = SimulatedFleet(self.specs, **self.sim_options)
        await self.sim.start()
        self.sim.write_kubeconfigs(clusters)
        if self.fleet_yaml:
            (clusters / "fleet.yaml").write_text(self.fleet_yaml)
        self.fleet = Fleet(clusters)
        app = create_app(self.fleet, enable_lifecycle=self.enable_lifecycle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        await self.fleet.wait_ready()
        self.session = aiohttp.ClientSession()
        return Env(self.sim, self.fleet, f"http://127.0.0.1:{port}", clusters, self.session)

    async def __aexit__(self, *exc) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.sim.stop()


class BackgroundEnv:
    """``started_env`` on its own event loop in a thread, for synchronous tests (hypothesis
    drives plain functions) that talk to the exporter over real sockets."""

    def __init__(self, tmp_path: Path, specs: list[ClusterSpec], fleet_yaml: str | None = None):
        self._ctx = started_env(tmp_path, specs, fleet_yaml)
        self.loop = asyncio.new_event_loop()
        self._thread = None
        self.env: Env | None = None

    def __enter__(self) -> Env:
        import threading

        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.env = asyncio.run_coroutine_threadsafe(self._ctx.__aenter__(), self.loop).result(60)
        return self.env

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc) -> None:
        self.run(self._ctx.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
