"""Soak: the 51-cluster demo fleet scraped by an HA pair every second while faults come
and go. Afterwards the exporter process has not grown, leaked no file descriptors or
threads, has no refresh left running, and its own counters match what the scrapers saw.

`SOAK_SECONDS` sets the length (default 60 s, enough for CI; run longer on demand).
"""

import asyncio
import os
import random
import re
import statistics
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from simulator.fleet import demo_fleet
from simulator.server import SimulatedFleet

from .conftest import wait_for
from .test_security import Exporter, wait_ready

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
FAULTS = ["500", "403", "429", "503", "reset", "invalid_json", "timeout", "truncated"]
FLEET_YAML = """
defaults:
  cache_ttl: 4s
  request_timeout: 2s
  refresh_timeout: 3s
"""


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mib": rss_kib // 1024, "threads": threads, "fds": fds}


async def scraper(session, url, names, seen: Counter, stop: asyncio.Event) -> None:
    """One Prometheus server: every cluster once per second, 1 s scrape timeout."""
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "1"}

    async def one(name):
        async with session.get(f"{url}/probe?cluster={name}", headers=headers) as r:
            text = await r.text()
            if r.status == 503:
                seen[("overloaded", name)] += 1
                return
            assert r.status == 200, (r.status, text[:200])
            ok = "\nprobe_success{" in text and re.search(r"^probe_success\{.*\} 1\.0$", text, re.M)
            seen[(name, "success" if ok else "failure")] += 1

    while not stop.is_set():
        tick = asyncio.get_running_loop().time()
        await asyncio.gather(*(one(n) for n in names))
        await asyncio.sleep(max(0.0, 1.0 - (asyncio.get_running_loop().time() - tick)))


async def tasks(session, url) -> int:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return int(float(re.search(r"^fleet_exporter_asyncio_tasks (\S+)$", text, re.M)[1]))


@pytest.mark.slow
async def test_soak(tmp_path):
    specs = demo_fleet()
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    rng = random.Random(7)
    async with SimulatedFleet(specs) as sim:
        sim.write_kubeconfigs(clusters)
        (clusters / "fleet.yaml").write_text(FLEET_YAML)
        names = sorted(p.stem for p in clusters.glob("*.yaml") if p.stem != "fleet")
        async with Exporter(clusters) as exp, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{exp.port}"
            await wait_ready(url)
            seen: Counter = Counter()
            stop = asyncio.Event()
            scrapers = [
                asyncio.create_task(scraper(session, url, names, seen, stop)) for _ in range(2)
            ]
            loop = asyncio.get_running_loop()
            start = loop.time()
            warm = None
            rss: list[tuple[float, int]] = []  # (fraction of the soak, RSS MiB)
            faulty: list[str] = []
            while loop.time() - start < SOAK_SECONDS:
                for name in faulty:
                    sim.clear_faults(name)
                faulty = rng.sample([n for n in sim.names()], 3)
                for name in faulty:
                    sim.set_fault(name, rng.choice(FAULTS))
                await asyncio.sleep(3)
                rss.append(
                    ((loop.time() - start) / SOAK_SECONDS, proc_stats(exp.proc.pid)["rss_mib"])
                )
                if warm is None and loop.time() - start > SOAK_SECONDS * 0.3:
                    warm = proc_stats(exp.proc.pid)
                    warm["tasks"] = await tasks(session, url)
            for name in faulty:
                sim.clear_faults(name)
            stop.set()
            await asyncio.gather(*scrapers)

            # Let refreshes still running in the background end (bounded by refresh_timeout).
            async def idle():
                async with session.get(url + "/metrics") as r:
                    return "fleet_exporter_refreshes_in_flight 0.0" in await r.text()

            await wait_for(idle, timeout=15, interval=0.2)
            end = proc_stats(exp.proc.pid)
            async with session.get(url + "/metrics") as r:
                metrics = await r.text()
            end["tasks"] = await tasks(session, url)

    probes = sum(v for (n, _r), v in seen.items() if n != "overloaded")
    assert probes > 2 * len(names) * SOAK_SECONDS * 0.5, f"too few probes: {probes}"
    assert sum(v for (n, r), v in seen.items() if r == "failure") > 0, "faults never showed"
    # The exporter's own counters agree with what the two scrapers saw, exactly.
    counted = Counter()
    for m in re.finditer(
        r'^fleet_exporter_probes_total\{cluster="([^"]+)",result="(\w+)"\} (\S+)$', metrics, re.M
    ):
        counted[(m.group(1), m.group(2))] = int(float(m.group(3)))
    expected = Counter({k: v for k, v in seen.items() if k[0] != "overloaded"})
    assert +counted == +expected
    overloaded = sum(v for (n, _c), v in seen.items() if n == "overloaded")
    assert (
        f'fleet_exporter_requests_rejected_total{{reason="overloaded"}} {overloaded}.0' in metrics
    )
    # No growth: memory within a small bound of the warmed-up process, no fd/thread leaks.
    # RSS swings by tens of MiB with whichever faults happen to coincide (a momentary peak
    # is the allocator's, not a leak), so compare medians: the middle of the soak against
    # its last third and the idle end. A leak moves the median; a peak does not.
    middle = statistics.median(m for f, m in rss if 0.3 <= f < 0.65)
    late = statistics.median([m for f, m in rss if f >= 0.65] + [end["rss_mib"]])
    print(f"soak {SOAK_SECONDS:.0f}s, {probes} probes: warm {warm}, end {end}, RSS {rss}")
    assert late - middle <= 25, (middle, late, rss, end)
    assert end["fds"] <= warm["fds"] + 10, (warm, end)
    assert end["threads"] <= warm["threads"] + 4, (warm, end)
    # Idle now, with two scrapers' worth of work done: only the server's own tasks remain.
    assert end["tasks"] <= warm["tasks"], (warm, end)
