"""A fleet of many clusters without any API server: real Refresh and ClusterState objects
(reduced from simulated Longhorn objects) put straight into a real Fleet's cache.

Used where only the pages are under test and a real fan-out to hundreds of clusters
would cost time without testing anything more: the 500-cluster overview.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fleet_exporter.config import ClusterConfig, Settings
from fleet_exporter.exposition import render
from fleet_exporter.fleet import ClusterRuntime, Fleet
from fleet_exporter.longhorn import RESOURCES
from fleet_exporter.longhorn.records import ClusterState
from fleet_exporter.longhorn.reduce import ClusterReducer
from fleet_exporter.prober import Refresh, ResourceResult
from simulator.fleet import ClusterSpec
from simulator.objects import KINDS, build_cluster
from tests.steps import add_page, finish


def reduced_state(spec: ClusterSpec) -> ClusterState:
    """What a refresh of a simulated cluster would hold, without the network."""
    objects = build_cluster(spec)
    reducer = ClusterReducer()
    for plural in RESOURCES:
        page = {"kind": f"{KINDS[plural]}List", "items": objects.items.get(plural, [])}
        add_page(reducer, plural, json.dumps(page).encode())
    return finish(reducer, frozenset(RESOURCES))


def refresh_of(name: str, state: ClusterState | None, error: str | None = None) -> Refresh:
    now, mono = time.time(), time.monotonic()
    ok = state is not None
    return Refresh(
        cluster=name,
        ok=ok,
        ttl=3600.0,
        max_staleness=7200.0,
        started_at=now - 0.2,
        finished_at=now,
        finished_mono=mono,
        error=error,
        calls=[],
        resources={r: ResourceResult(ok=ok, objects=1, pages=1, error=error) for r in RESOURCES},
        state=state,
        rendered=render([]),  # the pages never serve the metrics
    )


async def standin_fleet(directory: Path, n: int) -> Fleet:
    """``n`` clusters: every 10th degraded, every 50th with a faulted volume, every 25th
    down, every 40th never probed; the rest healthy. Names are ``c-0000``..."""
    fleet = Fleet(directory)
    healthy = reduced_state(ClusterSpec(name="healthy", volumes=12, seed=1))
    degraded = reduced_state(ClusterSpec(name="degraded", volumes=12, degraded_volumes=3, seed=2))
    faulted = reduced_state(
        ClusterSpec(name="faulted", volumes=12, faulted_volumes=1, failing_backups=2, seed=3)
    )
    for i in range(n):
        name = f"c-{i:04d}"
        config = ClusterConfig(name, directory / f"{name}.yaml", Settings(), {"idx": str(i)})
        fleet.clusters[name] = ClusterRuntime(config, fingerprint="standin")
        if i % 40 == 39:
            continue
        if i % 25 == 24:
            refresh = refresh_of(name, None, "volumes: HTTP 503: the server is unavailable")
        elif i % 50 == 7:
            refresh = refresh_of(name, faulted)
        elif i % 10 == 3:
            refresh = refresh_of(name, degraded)
        else:
            refresh = refresh_of(name, healthy)

        async def load(r: Refresh = refresh) -> Refresh:
            return r

        await fleet.cache.get(name, load, 5.0)
    return fleet
