"""File descriptors run out (issue 14): the exporter started under a hard limit of 256
open files (which ``serve`` cannot raise). 50 slow clusters refreshing at once hold 4
connections each, past the point where new refreshes are shed (a reserve of 64 left for
the listener); the next clusters probed meanwhile are shed with the reason, ``/healthz``
keeps answering throughout, and once the load passes every cluster is served again."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import aiohttp

from simulator.fleet import small_fleet
from simulator.server import SimulatedFleet

from .conftest import wait_for
from .test_security import Exporter, wait_ready

LIMIT = 256  # set with prlimit, util-linux's, in every Debian
HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "8"}


async def test_out_of_descriptors_new_refreshes_are_shed_and_healthz_answers(tmp_path):
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    # Each request takes a second: every refresh holds its 4 connections for 3 s.
    specs = [dataclasses.replace(s, latency_seconds=1.0) for s in small_fleet(80)]
    async with SimulatedFleet(specs) as sim:
        sim.write_kubeconfigs(clusters)
        (clusters / "fleet.yaml").write_text("defaults: {cache_ttl: 0s, max_backoff: 0s}\n")
        names = sorted(p.stem for p in clusters.glob("*.yaml") if p.stem != "fleet")
        exp = Exporter(clusters)
        exp.args[:0] = ["prlimit", f"--nofile={LIMIT}:{LIMIT}"]
        async with exp, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{exp.port}"
            await wait_ready(url)
            healthz: list[int] = []
            stop = asyncio.Event()

            async def poll_healthz() -> None:
                while not stop.is_set():
                    async with session.get(url + "/healthz") as r:
                        healthz.append(r.status)
                    await asyncio.sleep(0.05)

            async def probe(name: str) -> str:
                async with session.get(
                    f"{url}/probe?cluster={name}&debug=true", headers=HEADERS
                ) as r:
                    assert r.status == 200
                    return await r.text()

            poller = asyncio.create_task(poll_healthz())
            first = [asyncio.create_task(probe(n)) for n in names[:50]]
            await asyncio.sleep(1.5)  # their connections are open, and counted
            later = await asyncio.gather(*(probe(n) for n in names[50:]))
            await asyncio.gather(*first)
            stop.set()
            await poller
            shed = [a for a in later if "no new refresh starts until some close" in a]
            assert shed, "the limit was never reached: nothing to check"
            assert all(re.search(rf"shed: \d+ of {LIMIT} file descriptors open", a) for a in shed)
            assert healthz and set(healthz) == {200}
            # The load passed (the API servers quick again): every cluster is served.
            for name in names:
                sim.set_latency(name, 0)

            async def idle() -> bool:
                async with session.get(url + "/metrics") as r:
                    return "fleet_exporter_refreshes_in_flight 0.0" in await r.text()

            await wait_for(idle, timeout=30, interval=0.2)  # the load's refreshes ended
            for name in names:  # each within seconds: idle connections close under pressure

                async def served(name: str = name) -> bool:
                    return f'probe_success{{cluster="{name}"}} 1' in await probe(name)

                await wait_for(served, timeout=15, interval=0.5)
            async with session.get(url + "/metrics") as r:
                metrics = await r.text()
            assert f'fleet_exporter_open_files_limit{{limit="hard"}} {LIMIT}.0' in metrics
            assert f'fleet_exporter_open_files_limit{{limit="soft"}} {LIMIT}.0' in metrics
        log = exp.log.read_text()
        # asyncio's accept error, once per event when it was not folded (139 MB of log in
        # 85 s once), is written once a minute at most.
        assert log.count("out of system resource") <= 1
        assert "internal error" not in log
