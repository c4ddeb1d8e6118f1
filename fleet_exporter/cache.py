"""Per-cluster refresh results with single flight, on top of cachetools.

cachetools has no asyncio support, so the single flight is ours: one task per cluster
refreshes while every concurrent probe of that cluster awaits the same task through
``asyncio.shield``. A probe whose deadline passes stops waiting, but the refresh goes on and
fills the cache for the next scrape. Two ``TLRUCache``s hold the results with per-entry
lifetimes (each cluster has its own TTL and staleness bound):

- ``fresh``: the latest result, successful or not, served as is until its ``ttl`` ends;
- ``good``: the latest successful result, which a probe that ran out of time may serve
  until ``max_staleness`` after it was taken.

For people (the triage page), the latest result that failed is also kept past its TTL,
until a result succeeds: a cluster that has been down for an hour shows why its last
refresh failed. A failed result holds no data, so this costs little.

All access happens on the event loop thread, so no lock is needed (cachetools' classes are
not thread-safe).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from cachetools import TLRUCache

log = logging.getLogger(__name__)


class Cacheable(Protocol):
    ok: bool
    ttl: float
    max_staleness: float


V = TypeVar("V", bound=Cacheable)
Source = Literal["hit", "miss", "stale", "timeout"]


@dataclass(frozen=True, slots=True)
class Lookup(Generic[V]):
    """What a probe gets: the value to serve (None only for "timeout") and how."""

    value: V | None
    source: Source


class RefreshCache(Generic[V]):
    """Keys are configured cluster names only (the HTTP layer rejects others) and removed
    clusters are forgotten on reload, so ``maxsize`` is just a backstop."""

    def __init__(self, maxsize: int = 10_000, timer: Callable[[], float] = time.monotonic):
        self._fresh: TLRUCache[str, V] = TLRUCache(
            maxsize, ttu=lambda _k, v, now: now + v.ttl, timer=timer
        )
        self._good: TLRUCache[str, V] = TLRUCache(
            maxsize, ttu=lambda _k, v, now: now + v.max_staleness, timer=timer
        )
        self._inflight: dict[str, asyncio.Task[V]] = {}
        # Refreshes of a key forgotten while they ran (its configuration changed): they
        # end for the probes already waiting on them, and their results are not kept.
        self._detached: set[asyncio.Task[V]] = set()
        self._failed: dict[str, V] = {}  # the latest result, while it is a failure

    async def get(self, key: str, refresh: Callable[[], Awaitable[V]], wait: float) -> Lookup[V]:
        """The cached value for ``key``, or the result of a refresh that finishes within
        ``wait`` seconds, or the last good value, in that order of preference."""
        value = self._fresh.get(key)
        if value is not None:
            return Lookup(value, "hit")
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._run(key, refresh), name=f"refresh:{key}")
            self._inflight[key] = task
        try:
            return Lookup(await asyncio.wait_for(asyncio.shield(task), max(wait, 0)), "miss")
        except TimeoutError:
            good = self._good.get(key)
            return Lookup(good, "stale") if good is not None else Lookup(None, "timeout")

    async def _run(self, key: str, refresh: Callable[[], Awaitable[V]]) -> V:
        this = asyncio.current_task()
        try:
            value = await refresh()
            if self._inflight.get(key) is this:  # not forgotten meanwhile
                self._fresh[key] = value
                if value.ok:
                    self._good[key] = value
                    self._failed.pop(key, None)
                else:
                    self._failed[key] = value
            return value
        finally:
            if self._inflight.get(key) is this:
                del self._inflight[key]
            self._detached.discard(this)  # type: ignore[arg-type]

    def last_good(self, key: str) -> V | None:
        return self._good.get(key)

    def latest(self, key: str) -> V | None:
        return self._fresh.get(key)

    def newest(self, key: str) -> V | None:
        """The latest result, successful or not, for people: the fresh one; else the
        latest failure, kept past its TTL; else the last good one."""
        return self._fresh.get(key) or self._failed.get(key) or self._good.get(key)

    def refreshing(self, key: str) -> bool:
        return key in self._inflight

    def forget(self, key: str) -> None:
        """Drop everything about ``key`` (cluster removed or its configuration changed). A
        refresh still running ends for the probes already waiting on it, but the next
        probe starts a new one (with the new configuration) and the old result is not
        kept: it was made with what the reload replaced (its session already closed)."""
        self._fresh.pop(key, None)
        self._good.pop(key, None)
        self._failed.pop(key, None)
        task = self._inflight.pop(key, None)
        if task is not None:
            self._detached.add(task)

    async def close(self) -> None:
        """Cancel refreshes still running (shutdown)."""
        tasks = [*self._inflight.values(), *self._detached]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
