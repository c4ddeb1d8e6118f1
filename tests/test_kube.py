"""kube._inflate: list bodies as kube-apiserver gzips them, and every way one can be bad;
the room each takes in the fleet's memory budget."""

import gzip
import struct
import time

import pytest

from fleet_exporter.kube import NO_ROOM, UpstreamError, _inflate, _read_capped
from fleet_exporter.limits import MemoryBudget

BODY = b'{"kind":"VolumeList","items":[]}' * 1000
GZ = gzip.compress(BODY, 1)
CAP = 1 << 20
LYING = GZ[:-4] + struct.pack("<I", 100)  # the trailer says 100 bytes


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (GZ, None, None),
        (GZ + GZ, "invalid", "data after the end of the gzip body"),
        (GZ[:-20], "invalid", "the gzip body ends early"),
        (GZ[:10] + bytes(range(200)), "invalid", "gzip body does not inflate"),
        (BODY, "invalid", "body labelled gzip is not gzip"),
        (b"", "invalid", "body labelled gzip is not gzip"),
        (gzip.compress(bytes(CAP + 1), 9), "body_too_large", "once inflated exceeds the"),
        (LYING, "invalid", "inflates past the size its trailer gives"),
    ],
)
async def test_inflate(data: bytes, code: str | None, message: str | None) -> None:
    budget = MemoryBudget(4 * CAP)
    hold = budget.hold("c")
    deadline = time.monotonic() + 5
    if code is None:
        assert await _inflate(bytearray(data), CAP, hold, deadline) == BODY
        assert hold.bytes == budget.used == len(BODY)  # exactly what it holds
        hold.release()
        assert budget.used == 0
        return
    with pytest.raises(UpstreamError) as err:
        await _inflate(data, CAP, hold, deadline)
    assert err.value.code == code
    assert message in str(err.value)
    assert budget.used <= len(BODY)  # a bomb takes no room at all


class _Body:
    """What ``_read_capped`` reads of an aiohttp response: its length and its chunks."""

    content_length = None

    def __init__(self, *chunks: bytes) -> None:
        self.content = self
        self._chunks = chunks

    async def iter_chunked(self, n: int):
        for c in self._chunks:
            yield c


async def test_a_wait_for_the_budget_is_named_as_such_not_as_the_network() -> None:
    """A body within its cluster's share waits for room in a full budget until its
    deadline: the error says so (code ``memory``), not "no answer within 30s"."""
    budget = MemoryBudget(100)
    await budget.hold("other").grow(100, time.monotonic() + 1)  # full
    hold = budget.hold("c")
    with pytest.raises(UpstreamError) as err:
        await _read_capped(_Body(b"x" * 10), CAP, hold, time.monotonic() + 0.05)
    assert (err.value.code, str(err.value)) == ("memory", NO_ROOM)
    assert hold.bytes == 0


async def test_a_body_over_the_cap_is_refused_and_kept_nowhere() -> None:
    budget = MemoryBudget(4 * CAP)
    hold = budget.hold("c")
    with pytest.raises(UpstreamError) as err:
        await _read_capped(_Body(bytes(CAP), b"x"), CAP, hold, time.monotonic() + 1)
    assert err.value.code == "body_too_large"
