"""Soak with a real Prometheus: the 51-cluster demo fleet scraped every 5 s (4 s timeout)
through the shipped configuration, while eight clusters cycle through every fault a sick
API server can have, all eight at once (hung, trickling, oversized, a gzip bomb, endless
pages, throttled, reset). Afterwards Prometheus itself says: no scrape of any cluster
failed or ran past its timeout, and no healthy cluster missed a scrape or answered
``probe_success 0``.

`SOAK_SECONDS` sets the length: 60 s in `make test`, 600 s in `make soak`.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from simulator.faults import FaultSettings
from simulator.fleet import demo_fleet
from simulator.server import SimulatedFleet

from .prometheus_harness import render_shipped_config, running_prometheus
from .test_security import Exporter, wait_ready

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
INTERVAL, TIMEOUT = 5, 4
FAULTS = ["timeout", "slow_drip", "oversized", "gzip_bomb", "endless_continue", "throttle", "reset"]
FAULTY = 8
FLEET_YAML = f"defaults:\n  cache_ttl: {INTERVAL - 1}s\n"


def by_instance(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}


@pytest.mark.slow
@pytest.mark.prometheus
async def test_soak_with_prometheus_and_faults_toggled_fleet_wide(tmp_path):
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    quick = FaultSettings(oversized_bytes=48 << 20, hang_seconds=30)
    async with SimulatedFleet(demo_fleet(), fault_settings=quick) as sim:
        sim.write_kubeconfigs(clusters)
        (clusters / "fleet.yaml").write_text(FLEET_YAML)
        async with Exporter(clusters) as exp:
            address = f"127.0.0.1:{exp.port}"
            await wait_ready(f"http://{address}")
            config = render_shipped_config(
                tmp_path / "p",
                {"EXPORTER_ADDRESS": address},
                intervals=(f"{INTERVAL}s", f"{TIMEOUT}s"),
            )
            with running_prometheus(config, tmp_path / "run") as prom:
                job = 'job="longhorn-fleet"'

                def scraped_twice():
                    r = prom.query(f"count_over_time(probe_success{{{job}}}[1m]) >= 2")
                    return len(r) == len(sim.names()) and r

                await prom.async_wait_for(scraped_twice, 60, "every cluster scraped twice")
                ok_before = {
                    i
                    for i, v in by_instance(prom.query(f"probe_success{{{job}}}")).items()
                    if v == 1
                }
                faulty = sorted(ok_before)[:: max(1, len(ok_before) // FAULTY)][:FAULTY]
                healthy = ok_before - set(faulty)
                assert len(healthy) >= 35, sorted(ok_before)

                start = time.time()
                toggles = 0
                while time.time() - start < SOAK_SECONDS:
                    fault = FAULTS[toggles % len(FAULTS)]
                    for name in faulty:
                        sim.set_fault(name, fault)
                    await asyncio.sleep(min(8.0, max(0.0, start + SOAK_SECONDS - time.time())))
                    toggles += 1
                for name in faulty:
                    sim.clear_faults(name)
                await asyncio.sleep(INTERVAL + 1)  # the last scrapes are in
                window = f"[{int(time.time() - start)}s]"

                durations = by_instance(
                    prom.query(f"max_over_time(scrape_duration_seconds{{{job}}}{window})")
                )
                assert len(durations) == len(sim.names())
                slow = {i: d for i, d in durations.items() if d >= TIMEOUT}
                assert not slow, f"scrapes at or past the {TIMEOUT}s timeout: {slow}"
                up = by_instance(prom.query(f"min_over_time(up{{{job}}}{window})"))
                assert set(up.values()) == {1.0}, {i: v for i, v in up.items() if v != 1}
                success = by_instance(prom.query(f"min_over_time(probe_success{{{job}}}{window})"))
                missed = {i for i in healthy if success.get(i) != 1.0}
                assert not missed, f"healthy clusters with a failed probe: {sorted(missed)}"
                counts = by_instance(prom.query(f"count_over_time(up{{{job}}}{window})"))
                expected = (time.time() - start) / INTERVAL
                short = {i: c for i, c in counts.items() if i in healthy and c < expected - 2}
                assert not short, f"healthy clusters that missed scrapes ({expected:.0f}): {short}"
                # The faults did show: each faulty cluster failed while it had them.
                assert all(success.get(i) == 0.0 for i in faulty), {
                    i: success.get(i) for i in faulty
                }
                slowest = max(durations.values())
                print(f"soak {SOAK_SECONDS:.0f}s, {toggles} toggles, slowest scrape {slowest:.2f}s")
