"""kube._inflate: list bodies as kube-apiserver gzips them, and every way one can be bad;
the room each takes in the fleet's memory budget."""

import gzip
import struct
import time

import pytest

from fleet_exporter.kube import UpstreamError, _inflate
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
