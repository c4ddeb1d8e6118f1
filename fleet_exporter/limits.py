"""Fleet-wide bounds on what refreshes share: memory for list bodies, and file descriptors.

Waiting costs nothing (a refresh that waits on the network holds nothing another needs);
what is bounded is what costs. docs/architecture.md ("Isolation") has the whole design.

**Memory.** Every list body in flight, raw as it arrives and inflated, is accounted to its
cluster in one ``MemoryBudget``. When the budget is full, a cluster that asks for more
than its share (the budget divided among the clusters holding bytes) fails that list at
once; one within its share waits, in order, until bytes are released or its deadline
passes. So an oversized list or a gzip bomb costs its own cluster a list, never the
process its memory limit, and the healthy clusters' pages keep flowing.

**File descriptors.** The soft ``RLIMIT_NOFILE`` is raised to the hard limit at start
(Go programs do the same). ``Descriptors`` says when idle connections should be closed
(past three quarters of the limit) and when new refreshes must be shed (less than a
reserve left), so that the listener can always accept: ``/healthz`` and the probes of
clusters with cached data keep answering.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
DEFAULT_MEMORY_BUDGET = 256 * MiB  # without a container memory limit
CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def container_memory_limit() -> int | None:
    """The memory limit of this container (cgroup), or None without one."""
    for path in CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "none"
            return int(text)
        return None
    return None


def default_memory_budget() -> tuple[int, str]:
    """The budget, and where it comes from (for the log): a quarter of the container's
    memory limit (the rest is the steady state, the decoded records and the rendered
    answers; docs/architecture.md), else 256 MiB."""
    limit = container_memory_limit()
    if limit is None:
        return DEFAULT_MEMORY_BUDGET, "no container memory limit"
    return limit // 4, f"a quarter of the container's memory limit of {limit // MiB} MiB"


class MemoryShareExceeded(Exception):
    """A cluster asked for more than its share of a full budget."""


class MemoryBudget:
    """Bytes of list bodies in flight, fleet-wide, by cluster."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._held: collections.Counter[str] = collections.Counter()
        self._waiting: collections.deque[tuple[str, int, asyncio.Future[None]]] = (
            collections.deque()
        )

    def hold(self, cluster: str) -> Hold:
        """A new, empty reservation for one body of ``cluster``."""
        return Hold(self, cluster)

    def share(self) -> int:
        """What each cluster holding bytes may hold when the budget is full."""
        return self.limit // max(1, len(self._held))

    async def _grow(self, cluster: str, n: int, deadline: float) -> None:
        if n <= 0:
            return
        if self.used + n <= self.limit and not self._waiting:
            self._take(cluster, n)
            return
        share = self.limit // max(1, len(self._held | {cluster: 1}))
        if self._held[cluster] + n > share:
            raise MemoryShareExceeded(
                f"its list bodies would take {(self._held[cluster] + n) / MiB:.1f} MiB, more "
                f"than its share ({share / MiB:.1f} MiB) of the fleet's memory budget "
                f"({self.limit // MiB} MiB, full)"
            )
        waiter = asyncio.get_running_loop().create_future()
        entry = (cluster, n, waiter)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give(cluster, n)  # granted just as it gave up: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
            raise

    def _take(self, cluster: str, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)
        self._held[cluster] += n

    def _give(self, cluster: str, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        self._held[cluster] -= n
        if self._held[cluster] <= 0:
            del self._held[cluster]
        while self._waiting:
            waiting_cluster, size, waiter = self._waiting[0]
            if waiter.done():
                self._waiting.popleft()
                continue
            if self.used + size > self.limit:
                break
            self._waiting.popleft()
            self._take(waiting_cluster, size)
            waiter.set_result(None)


class Hold:
    """The bytes one body holds in the budget; ``release`` gives them all back (again is
    harmless)."""

    __slots__ = ("_budget", "_cluster", "bytes")

    def __init__(self, budget: MemoryBudget, cluster: str) -> None:
        self._budget, self._cluster, self.bytes = budget, cluster, 0

    async def grow(self, n: int, deadline: float) -> None:
        """Take ``n`` more bytes. Raises MemoryShareExceeded, or TimeoutError when the
        bytes are not free before ``deadline`` (``time.monotonic()``)."""
        await self._budget._grow(self._cluster, n, deadline)
        self.bytes += n

    def shrink(self, n: int) -> None:
        n = min(n, self.bytes)
        self.bytes -= n
        self._budget._give(self._cluster, n)

    def release(self) -> None:
        self.shrink(self.bytes)


@dataclass(frozen=True)
class FileLimit:
    soft: int
    hard: int
    raised_from: int | None  # the soft limit before start, when it was raised


def raise_file_limit() -> FileLimit:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit (1024 is a common soft default; this
    exporter holds a few connections per cluster)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft >= target:
        return FileLimit(soft, hard, None)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return FileLimit(soft, hard, None)
    return FileLimit(target, hard, soft)


class Descriptors:
    """How many descriptors are open against the soft limit, counted at most once a
    second (``/proc/self/fd``: ~0.2 ms at 2,000 descriptors)."""

    def __init__(self) -> None:
        self._open = 0
        self._counted = -1.0

    @staticmethod
    def limit() -> int:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def open(self, fresh: bool = False) -> int:
        now = time.monotonic()
        if fresh or now - self._counted > 1.0:
            try:
                self._open = len(os.listdir("/proc/self/fd"))
            except OSError as e:
                # Listing takes a descriptor: with none left that is the answer (it once
                # read as 0, and nothing was ever shed). Not Linux: no pressure is seen.
                self._open = self.limit() if e.errno in (errno.EMFILE, errno.ENFILE) else 0
            self._counted = now
        return self._open

    def reserve(self) -> int:
        """Descriptors kept for the listener and its connections: a tenth, at least 64."""
        return max(64, self.limit() // 10)

    def pressure(self) -> bool:
        """Idle connections should be closed."""
        return self.open() > self.limit() * 3 // 4

    def exhausted(self, fresh: bool = False) -> bool:
        """New refreshes must be shed: less than ``reserve`` left."""
        return self.open(fresh) > self.limit() - self.reserve()
