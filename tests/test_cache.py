"""The single-flight refresh cache: one upstream round per TTL, stale serving, bounds."""

import asyncio
from dataclasses import dataclass

from fleet_exporter.cache import RefreshCache


@dataclass
class Value:
    n: int
    ok: bool = True
    ttl: float = 10.0
    max_staleness: float = 100.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Upstream:
    """Counts refreshes; each one waits for ``release`` when ``gate`` is set."""

    def __init__(self, ok: bool = True):
        self.calls = 0
        self.ok = ok
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Value:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return Value(self.calls, ok=self.ok)


async def test_hundred_concurrent_gets_share_one_refresh():
    cache, up = RefreshCache(timer=Clock()), Upstream()
    up.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.get("a", up, wait=5)) for _ in range(100)]
    await asyncio.sleep(0)
    assert cache.refreshing("a")
    up.gate.set()
    results = await asyncio.gather(*waiters)
    assert up.calls == 1
    assert {r.value.n for r in results} == {1}
    assert {r.source for r in results} == {"miss"}
    assert not cache.refreshing("a")


async def test_fresh_within_ttl_then_refresh_after():
    clock = Clock()
    cache, up = RefreshCache(timer=clock), Upstream()
    assert (await cache.get("a", up, 5)).source == "miss"
    clock.now += 9.9
    hit = await cache.get("a", up, 5)
    assert (hit.source, hit.value.n, up.calls) == ("hit", 1, 1)
    clock.now += 0.2
    again = await cache.get("a", up, 5)
    assert (again.source, again.value.n, up.calls) == ("miss", 2, 2)


async def test_deadline_serves_stale_and_refresh_finishes_in_background():
    clock = Clock()
    cache, up = RefreshCache(timer=clock), Upstream()
    await cache.get("a", up, 5)  # good data n=1
    clock.now += 11  # expired, but within max_staleness
    up.gate = asyncio.Event()
    stale = await cache.get("a", up, wait=0.01)
    assert (stale.source, stale.value.n) == ("stale", 1)
    assert cache.refreshing("a"), "the refresh must outlive the probe that started it"
    up.gate.set()
    while cache.refreshing("a"):
        await asyncio.sleep(0)
    fresh = await cache.get("a", up, wait=0)
    assert (fresh.source, fresh.value.n, up.calls) == ("hit", 2, 2)


async def test_deadline_without_good_data_is_a_timeout():
    cache, up = RefreshCache(timer=Clock()), Upstream()
    up.gate = asyncio.Event()
    lookup = await cache.get("a", up, wait=0.01)
    assert (lookup.source, lookup.value) == ("timeout", None)
    up.gate.set()
    await asyncio.sleep(0)


async def test_stale_data_expires_after_max_staleness():
    clock = Clock()
    cache, up = RefreshCache(timer=clock), Upstream()
    await cache.get("a", up, 5)
    clock.now += 100.1
    up.gate = asyncio.Event()
    assert (await cache.get("a", up, wait=0.01)).source == "timeout"
    up.gate.set()
    await asyncio.sleep(0)


async def test_failed_refresh_is_served_for_its_ttl_and_does_not_replace_good_data():
    clock = Clock()
    cache, up = RefreshCache(timer=clock), Upstream()
    await cache.get("a", up, 5)
    clock.now += 11
    up.ok = False
    failed = await cache.get("a", up, 5)
    assert (failed.source, failed.value.ok) == ("miss", False)
    # Within its TTL the failure is served as is: a dead cluster is not hammered.
    assert (await cache.get("a", up, 5)).value is failed.value
    assert up.calls == 2
    assert cache.last_good("a").n == 1


async def test_clusters_are_independent_and_forget_drops_data():
    clock = Clock()
    cache, up_a, up_b = RefreshCache(timer=clock), Upstream(), Upstream()
    up_b.gate = asyncio.Event()
    slow = asyncio.create_task(cache.get("b", up_b, wait=5))
    assert (await cache.get("a", up_a, wait=5)).source == "miss"  # not blocked by b
    up_b.gate.set()
    await slow
    cache.forget("a")
    assert cache.latest("a") is None and cache.last_good("a") is None
    assert cache.latest("b") is not None


async def test_size_is_bounded():
    cache = RefreshCache(maxsize=8, timer=Clock())
    for i in range(50):
        await cache.get(f"c{i}", Upstream(), 5)
    assert len(cache._fresh) == 8
    assert len(cache._good) == 8


async def test_close_cancels_running_refreshes():
    cache, up = RefreshCache(timer=Clock()), Upstream()
    up.gate = asyncio.Event()
    await cache.get("a", up, wait=0.01)
    assert cache.refreshing("a")
    await cache.close()
    assert not cache.refreshing("a")


async def test_newest_keeps_a_failure_past_its_ttl_until_a_success():
    """For the triage page: a cluster down for an hour still shows why its last refresh
    failed; a success replaces it; forgetting the cluster drops it."""
    clock = Clock()
    cache, up = RefreshCache(timer=clock), Upstream()
    await cache.get("a", up, 5)  # good: n=1
    up.ok = False
    clock.now += 11
    await cache.get("a", up, 5)  # failed: n=2
    clock.now += 1000  # past the failure's TTL and the good one's staleness
    assert cache.latest("a") is None and cache.last_good("a") is None
    assert cache.newest("a").n == 2
    up.ok = True
    await cache.get("a", up, 5)
    clock.now += 11  # the success's TTL is over; its staleness is not
    assert cache.newest("a").n == 3
    up.ok = False
    clock.now += 1000
    await cache.get("a", up, 5)
    cache.forget("a")
    assert cache.newest("a") is None


async def test_a_failure_forgotten_while_refreshing_is_not_kept():
    cache, up = RefreshCache(timer=Clock()), Upstream(ok=False)
    up.gate = asyncio.Event()
    task = asyncio.create_task(cache.get("a", up, 5))
    await asyncio.sleep(0)
    cache.forget("a")
    up.gate.set()
    await task
    assert cache._failed == {}


async def test_a_probe_after_forget_never_joins_the_refresh_it_replaced():
    """A reload forgets a cluster whose refresh is running (with the old configuration,
    its session about to close): the next probe starts a new refresh, the old one still
    answers the probe that was waiting on it, and its result is not cached."""
    cache, old_config, new_config = RefreshCache(timer=Clock()), Upstream(ok=False), Upstream()
    old_config.gate = asyncio.Event()
    waiting = asyncio.create_task(cache.get("a", old_config, 5))
    while old_config.calls < 1:
        await asyncio.sleep(0)
    cache.forget("a")
    assert not cache.refreshing("a")
    new = await cache.get("a", new_config, 5)
    assert new_config.calls == 1 and new.source == "miss" and new.value.ok
    old_config.gate.set()
    old = await waiting
    assert old.source == "miss" and not old.value.ok  # for the probe that waited on it
    assert cache.latest("a") is new.value and cache.newest("a") is new.value  # not kept
    assert (await cache.get("a", new_config, 5)).source == "hit"


async def test_close_cancels_a_forgotten_refresh_too():
    cache, up = RefreshCache(timer=Clock()), Upstream()
    up.gate = asyncio.Event()
    await cache.get("a", up, wait=0.01)
    cache.forget("a")
    await cache.close()
    assert not cache._detached
