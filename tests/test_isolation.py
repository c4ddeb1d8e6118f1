"""No cluster can starve, stall or kill the others: hung API servers hold nothing the
healthy clusters need, a failing cluster backs off on its own, and an oversized list
costs its own cluster only. Real sockets, real TLS, the simulator's faults.
(The fault-at-scale figures come from the benchmark: `make bench-faults`.)"""

from __future__ import annotations

import asyncio
import time

from simulator.faults import FaultSettings
from simulator.fleet import ClusterSpec

from .conftest import started_env, value

HUNG = [f"hung-{i}" for i in range(10)]
HEALTHY = [f"ok-{i}" for i in range(6)]


def specs(faulty: list[str], fault: str) -> list[ClusterSpec]:
    return [
        *(
            ClusterSpec(name=n, volumes=3, nodes=1, seed=i, faults={"*": fault})
            for i, n in enumerate(faulty)
        ),
        *(ClusterSpec(name=n, volumes=3, nodes=1, seed=50 + i) for i, n in enumerate(HEALTHY)),
    ]


async def test_hung_api_servers_hold_nothing_the_others_need(tmp_path):
    """Ten hung clusters (more than the eight refreshes that once ran at a time) refresh
    in the background for a minute; every healthy cluster's probe meanwhile answers at
    once, with fresh data."""
    yaml = "defaults: {cache_ttl: 1s}\n"
    quick = FaultSettings(hang_seconds=30)
    async with started_env(tmp_path, specs(HUNG, "timeout"), yaml, fault_settings=quick) as env:
        hung = [
            asyncio.create_task(env.probe(n, headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"}))
            for n in HUNG
        ]
        await asyncio.sleep(0.3)  # every hung refresh is waiting on its API server
        assert all(env.fleet.cache.refreshing(n) for n in HUNG)
        started = time.monotonic()
        for _ in range(3):
            answers = await asyncio.gather(*(env.probe(n) for n in HEALTHY))
            assert [value(a[1], "probe_success") for a in answers] == [1.0] * len(HEALTHY)
            await asyncio.sleep(1.1)  # past the TTL: the next round refreshes again
        assert time.monotonic() - started < 3 * 1.1 + 2
        for status, smp, _ in await asyncio.gather(*hung):
            assert status == 200 and value(smp, "probe_success") == 0


async def test_a_failing_cluster_backs_off_and_its_probes_answer_at_once(tmp_path):
    yaml = "defaults: {cache_ttl: 1s, max_backoff: 30s}\n"
    async with started_env(tmp_path, specs(["down"], "500"), yaml) as env:
        for _ in range(2):  # two failures in a row start the back-off
            _, smp, _ = await env.probe("down")
            assert value(smp, "probe_success") == 0
            env.fleet.cache.forget("down")
        calls = env.sim.requests("down")
        started = time.monotonic()
        _, text, _ = await env.get("/probe?cluster=down&debug=true")
        assert time.monotonic() - started < 0.5
        assert "backing off: 2 refreshes failed in a row; next attempt in 1s" in text
        assert "HTTP 500" in text  # and why
        assert env.sim.requests("down") == calls  # no call while it backs off
        assert value((await env.probe(HEALTHY[0]))[1], "probe_success") == 1


async def test_an_oversized_list_costs_its_own_cluster_only(tmp_path):
    """Two clusters answer every list with bodies far past the memory budget; their lists
    fail with the reason, the budget is never exceeded, and the others are served."""
    yaml = "server: {memory_budget: 8Mi}\ndefaults: {max_page_bytes: 6Mi}\n"
    big = FaultSettings(oversized_bytes=64 << 20)
    async with started_env(
        tmp_path, specs(["big-0", "big-1"], "oversized"), yaml, fault_settings=big
    ) as env:
        answers = await asyncio.gather(*(env.probe(n) for n in ["big-0", "big-1", *HEALTHY]))
        for name, (status, smp, _) in zip(["big-0", "big-1", *HEALTHY], answers, strict=True):
            assert status == 200
            assert value(smp, "probe_success") == (0 if name.startswith("big") else 1), name
        _, debug, _ = await env.get("/probe?cluster=big-0&debug=true")
        assert "body_too_large" in debug or "memory" in debug
        assert env.fleet.budget.peak <= 8 << 20
        assert env.fleet.budget.used == 0  # every byte came back


async def test_an_oversized_list_backs_off_from_its_first_failure(tmp_path):
    """A list over ``max_page_bytes`` fails the same way every time: the next attempt
    waits from the first failure instead of fetching the body again at every probe."""
    yaml = "defaults: {cache_ttl: 1s, max_backoff: 30s, max_page_bytes: 1Mi}\n"
    big = FaultSettings(oversized_bytes=4 << 20)
    async with started_env(tmp_path, specs(["big"], "oversized"), yaml, fault_settings=big) as env:
        assert value((await env.probe("big"))[1], "probe_success") == 0
        env.fleet.cache.forget("big")
        calls = env.sim.requests("big")
        _, text, _ = await env.get("/probe?cluster=big&debug=true")
        assert "backing off: 1 refresh failed; next attempt in 1s" in text
        assert "body exceeds the 1048576-byte cap" in text
        assert env.sim.requests("big") == calls


async def test_a_failed_core_list_stops_the_others_at_once(tmp_path):
    """When the volumes list fails the refresh can serve nothing, so lists still waiting
    on a hung API server stop then, instead of holding connections until the deadline."""
    yaml = "defaults: {cache_ttl: 0s, refresh_timeout: 20s, request_timeout: 20s}\n"
    spec = ClusterSpec(name="half", volumes=3, nodes=1, faults={"*": "timeout", "volumes": 500})
    quick = FaultSettings(hang_seconds=15)
    async with started_env(tmp_path, [spec], yaml, fault_settings=quick) as env:
        started = time.monotonic()
        _, text, _ = await env.get("/probe?cluster=half&debug=true")
        assert time.monotonic() - started < 5
        assert 'probe_success{cluster="half"} 0' in text
        assert "nodes: stopped after volumes: HTTP 500" in text


async def test_stopped_lists_leave_no_body_for_the_cycle_collector(tmp_path):
    """Lists stopped mid-body (the volumes list failed) keep their frames in their tasks'
    errors; those frames once sat in reference cycles holding the bodies they were
    reading: 121 MB for one cluster, freed only by a full collection, which the exporter
    makes rare. Now reference counting frees them."""
    import gc
    import types

    yaml = "defaults: {cache_ttl: 0s, max_page_bytes: 256Mi}\n"
    spec = ClusterSpec(name="half", volumes=3, nodes=1, faults={"*": "oversized", "volumes": 500})
    big = FaultSettings(oversized_bytes=1 << 30)
    async with started_env(tmp_path, [spec], yaml, fault_settings=big) as env:
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
        try:
            _, text, _ = await env.get("/probe?cluster=half&debug=true")
            gc.collect()
            held = 0
            for o in gc.garbage:
                refs = o.f_locals.values() if isinstance(o, types.FrameType) else []
                refs = [*refs, *gc.get_referents(o)]
                held += sum(len(r) for r in refs if isinstance(r, bytes | bytearray))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert "snapshots: stopped after volumes: HTTP 500" in text
        assert held < 1 << 20, f"{held} bytes only the cycle collector could free"


async def test_a_refresh_leaves_no_garbage_for_the_cycle_collector(tmp_path):
    """A refresh's records go as soon as its data is replaced, by reference counting: a
    reference cycle (once: the reducer's bound methods) left tens of MB per big refresh
    waiting for a full collection, which the exporter makes rare (knobs.FULL_GC_AFTER)."""
    import gc

    yaml = "defaults: {cache_ttl: 0s}\n"
    async with started_env(tmp_path, specs([], "none")[:2], yaml) as env:
        await env.probe(HEALTHY[0])  # connections made, modules warm
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                assert value((await env.probe(HEALTHY[0]))[1], "probe_success") == 1
            found = gc.collect()
        finally:
            gc.enable()
        reducers = [o for o in gc.get_objects() if type(o).__name__ == "ClusterReducer"]
        assert not reducers
        assert found < 20, f"{found} objects only the cycle collector could free"
