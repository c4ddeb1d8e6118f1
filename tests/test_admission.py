"""Probe admission that fits the fleet: ``server.max_concurrent_probes: auto`` is 4 per
configured cluster + 100, recomputed at every reload, so an HA pair's sweep of every
cluster is never refused; a number still refuses at once past it (test_exporter)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp

from simulator.fleet import ClusterSpec

from .conftest import started_env

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def tiny_fleet(n: int) -> list[ClusterSpec]:
    return [ClusterSpec(name=f"c{i:03d}", volumes=2, nodes=1, seed=i) for i in range(n)]


async def test_default_limit_admits_an_ha_sweep_of_every_cluster(tmp_path: Path) -> None:
    """Two scrapers probing every one of 110 hanging clusters at once: 220 probes in
    flight, more than the old fixed limit (200), all admitted. With a limit one short,
    exactly one is refused: so the 220 really were in flight together."""
    n = 110
    specs = tiny_fleet(n)
    fleet_yaml = "server: {max_concurrent_refreshes: 250}\n"
    async with started_env(tmp_path, specs, fleet_yaml) as env:
        for spec in specs:
            env.sim.set_latency(spec.name, 60)  # no refresh ends before the test does
        headers = {TIMEOUT_HEADER: "3"}  # so each probe waits its 2.5 s

        async def sweep() -> list[int]:
            # Its own session: the shared one opens at most 100 connections at once.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

                async def probe(name: str) -> int:
                    async with s.get(f"{env.url}/probe?cluster={name}", headers=headers) as r:
                        return r.status

                return await asyncio.gather(*(probe(c.name) for _ in (1, 2) for c in specs))

        _, text, _ = await env.get("/metrics")
        assert f"fleet_exporter_probes_in_flight_limit {4 * n + 100}.0" in text
        assert await sweep() == [200] * 2 * n

        (env.clusters / "fleet.yaml").write_text(
            fleet_yaml.replace("}", f", max_concurrent_probes: {2 * n - 1}}}")
        )
        await env.fleet.reload()
        statuses = await sweep()
        assert statuses.count(503) == 1 and statuses.count(200) == 2 * n - 1


async def test_auto_limit_is_recomputed_at_reload(tmp_path: Path) -> None:
    async with started_env(tmp_path, tiny_fleet(3)) as env:
        _, text, _ = await env.get("/metrics")
        assert "fleet_exporter_probes_in_flight_limit 112.0" in text
        shutil.copy(env.clusters / "c000.yaml", env.clusters / "added.yaml")
        await env.fleet.reload()
        _, text, _ = await env.get("/metrics")  # a reload shows at once (selfmetrics)
        assert "fleet_exporter_probes_in_flight_limit 116.0" in text


async def test_in_flight_probes_are_shown(tmp_path: Path) -> None:
    async with started_env(tmp_path, tiny_fleet(1)) as env:
        env.sim.set_latency("c000", 60)
        headers = {TIMEOUT_HEADER: "1.5"}  # each probe waits 1 s
        probes = [asyncio.create_task(env.probe("c000", headers=headers)) for _ in range(3)]
        await asyncio.sleep(0.5)
        _, text, _ = await env.get("/metrics")
        assert "fleet_exporter_probes_in_flight 3.0" in text
        await asyncio.gather(*probes)
