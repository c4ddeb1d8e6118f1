"""The fleet-wide memory budget for list bodies: who waits, who is refused, and that every
byte comes back (cancellation included); the file-descriptor limit."""

import asyncio
import resource
import time

import pytest

from fleet_exporter.limits import (
    Descriptors,
    MemoryBudget,
    MemoryShareExceeded,
    raise_file_limit,
)


def soon(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


async def test_room_is_granted_until_the_budget_is_full():
    budget = MemoryBudget(100)
    a, b = budget.hold("a"), budget.hold("b")
    await a.grow(60, soon())
    await b.grow(40, soon())
    assert budget.used == 100 and budget.peak == 100
    a.release()
    b.release()
    b.release()  # again: harmless
    assert budget.used == 0


async def test_a_cluster_over_its_share_of_a_full_budget_is_refused_at_once():
    budget = MemoryBudget(100)
    big, small = budget.hold("big"), budget.hold("small")
    await big.grow(90, soon())
    await small.grow(10, soon())
    # Full. Two clusters hold bytes, so each may hold 50: "big" holds 90.
    started = time.monotonic()
    with pytest.raises(MemoryShareExceeded, match="more than its share"):
        await budget.hold("big").grow(5, soon())
    assert time.monotonic() - started < 0.1
    assert budget.used == 100


async def test_within_its_share_a_cluster_waits_in_order_until_bytes_come_back():
    budget = MemoryBudget(100)
    big = budget.hold("big")
    await big.grow(90, soon())
    got: list[str] = []

    async def want(cluster: str, n: int) -> None:
        await budget.hold(cluster).grow(n, soon())
        got.append(cluster)

    first = asyncio.create_task(want("x", 30))
    second = asyncio.create_task(want("y", 5))  # would fit, but waits its turn
    await asyncio.sleep(0.01)
    assert got == []
    big.release()
    await asyncio.gather(first, second)
    assert got == ["x", "y"] and budget.used == 35


async def test_a_wait_ends_at_the_deadline_and_cancelled_waits_give_nothing_away():
    budget = MemoryBudget(100)
    await budget.hold("a").grow(100, soon())
    with pytest.raises(TimeoutError):
        await budget.hold("b").grow(10, soon(0.05))
    task = asyncio.create_task(budget.hold("c").grow(10, soon()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.used == 100 and not budget._waiting


def test_the_soft_file_limit_is_raised_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_file_limit()
        assert limit.raised_from == min(256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit.soft == hard
        assert Descriptors.limit() == hard
        d = Descriptors()
        assert 0 < d.open(fresh=True) < d.limit() - d.reserve()
        assert not d.exhausted() and not d.pressure()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
