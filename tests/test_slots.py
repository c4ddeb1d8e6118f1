"""Slots: bounded concurrency, longest expected job first (refresh slots, CPU turns)."""

import asyncio

import pytest

from fleet_exporter.scheduling import Slots


async def _order(size: int, arrivals: list[float], defer: bool = False) -> list[int]:
    """Hold all ``size`` slots, queue one waiter per arrival (in order), free the slots,
    and return the indices of the arrivals in the order they got a slot."""
    slots = Slots(size, defer=defer)
    started: list[int] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with slots.slot(0.0):
            await gate.wait()

    async def waiter(i: int, expected: float) -> None:
        async with slots.slot(expected):
            started.append(i)
            await asyncio.sleep(0)

    holders = [asyncio.create_task(holder()) for _ in range(size)]
    await asyncio.sleep(0)
    waiters = []
    for i, expected in enumerate(arrivals):
        waiters.append(asyncio.create_task(waiter(i, expected)))
        await asyncio.sleep(0)  # arrive in this order
    gate.set()
    await asyncio.gather(*holders, *waiters)
    return started


@pytest.mark.parametrize(
    ("arrivals", "order"),
    [
        ([1.0, 5.0, 3.0], [1, 2, 0]),  # longest first
        ([2.0, 2.0, 2.0], [0, 1, 2]),  # ties: arrival order
        ([0.0, 0.0, 0.5, 0.0], [2, 0, 1, 3]),  # never refreshed (0) last, in arrival order
        ([0.0, 0.1], [1, 0]),
    ],
)
@pytest.mark.parametrize("defer", [False, True])
async def test_waiters_start_longest_expected_first(arrivals, order, defer):
    assert await _order(1, arrivals, defer) == order


async def test_never_more_than_size_hold_a_slot():
    slots = Slots(3)
    held = peak = 0

    async def job(expected: float) -> None:
        nonlocal held, peak
        async with slots.slot(expected):
            held += 1
            peak = max(peak, held)
            await asyncio.sleep(0.001)
            held -= 1

    await asyncio.gather(*(job(i % 7) for i in range(40)))
    assert peak == 3 and held == 0
    async with slots.slot(1.0), slots.slot(1.0), slots.slot(1.0):  # every slot came back
        pass


async def test_a_cancelled_waiter_passes_its_turn_on():
    slots = Slots(1)
    gate = asyncio.Event()
    started: list[str] = []

    async def job(name: str, expected: float) -> None:
        async with slots.slot(expected):
            started.append(name)
            await gate.wait()

    first = asyncio.create_task(job("first", 0))
    await asyncio.sleep(0)
    big = asyncio.create_task(job("big", 10))
    small = asyncio.create_task(job("small", 1))
    await asyncio.sleep(0)
    big.cancel()  # waiting: its place in the queue is skipped
    gate.set()
    await asyncio.gather(first, small)
    assert started == ["first", "small"]
    assert big.cancelled()


async def test_granted_but_cancelled_before_running_passes_the_slot_on():
    slots = Slots(1)
    started: list[str] = []
    release = asyncio.Event()
    tasks: dict[str, asyncio.Task[None]] = {}

    async def job(name: str) -> None:
        async with slots.slot(1.0):
            started.append(name)
            await release.wait()
        if name == "first":
            tasks["second"].cancel()  # granted a moment ago, not yet running

    tasks["first"] = asyncio.create_task(job("first"))
    await asyncio.sleep(0)
    tasks["second"] = asyncio.create_task(job("second"))
    tasks["third"] = asyncio.create_task(job("third"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(tasks["first"], tasks["third"])
    assert started == ["first", "third"]
    assert tasks["second"].cancelled()


async def test_deferred_slots_hand_over_in_a_later_loop_iteration():
    """CPU turns: the next holder starts only after callbacks queued meanwhile (I/O) ran."""
    slots = Slots(1, defer=True)
    events: list[str] = []

    async def step(name: str) -> None:
        async with slots.slot(1.0):
            events.append(name)
            if name == "a":
                asyncio.get_running_loop().call_soon(events.append, "io")

    await asyncio.gather(step("a"), step("b"))
    assert events == ["a", "io", "b"]
