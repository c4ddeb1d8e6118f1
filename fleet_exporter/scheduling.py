"""CPU turns: bounded concurrency where the longest job goes first.

Prometheus scrapes every cluster at the same interval boundary, so every cold cluster's
refresh wants to start at once, and the sweep ends when the longest one does. First come,
first served started the biggest cluster whenever its probe happened to arrive: 0.9 s
late in the benchmark's 51-cluster sweep, where its own lists take 2.7 s, and once
started, its pages queued for the CPU behind every small cluster's. Longest first (the
classic rule for finishing a batch of jobs early on a few workers) starts it at once and
keeps its chain of pages moving; the small clusters fill the gaps while it waits for the
network.

The refreshes' heavy steps (a page's decode and reduce, a slice of join or render) take
CPU turns: one step per event-loop iteration across all refreshes, at most ``knobs.SLICE``
seconds each, the longest refresh's first. Slicing alone did not bound an iteration:
eight refreshes each ran their slice in the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Generator
from typing import TypeVar

from .knobs import SLICE

R = TypeVar("R")


class Slots:
    """At most ``size`` holders at once. A freed slot goes to the waiter with the longest
    ``expected`` duration; equal ones in arrival order. A cluster never refreshed counts
    as 0: ranking it first would put the one known big cluster behind every new one (a
    sweep of 51 clusters of which 49 were new took 5.6 s instead of 3.6).
    With ``defer``, a freed slot is handed on in the next event-loop iteration, not at
    once, so the loop serves its I/O in between.

    A waiter cannot starve: each cluster has at most one refresh (the cache's single
    flight), so every other cluster overtakes it at most once."""

    def __init__(self, size: int, *, defer: bool = False) -> None:
        self.size = size
        self._defer = defer
        self._held = 0
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, expected: float = 0.0) -> AsyncIterator[None]:
        if self._held < self.size and not self._waiting:
            self._held += 1
        else:
            granted = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (-expected, next(self._arrivals), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._hand_on()  # handed a slot, but cancelled before taking it
                raise
        try:
            yield
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        if self._defer:
            asyncio.get_running_loop().call_soon(self._release)
        else:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the slot passes on: still held
                return
        self._held -= 1


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Slots] = weakref.WeakKeyDictionary()


def cpu_turns() -> Slots:
    """The running event loop's CPU turns (one holder at a time, handed on in the next
    loop iteration so the loop serves its I/O in between)."""
    loop = asyncio.get_running_loop()
    turns = _TURNS.get(loop)
    if turns is None:
        turns = _TURNS[loop] = Slots(1, defer=True)
    return turns


async def run_sliced(steps: Generator[None, None, R], expected: float = 0.0) -> R:
    """Run a stepwise computation on the event loop, ``SLICE`` seconds per CPU turn;
    ``expected`` is how long the refresh it belongs to is likely to take."""
    turns = cpu_turns()
    while True:
        async with turns.slot(expected):
            until = time.perf_counter() + SLICE
            while time.perf_counter() < until:
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value
