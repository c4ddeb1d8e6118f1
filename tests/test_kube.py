"""kube._inflate: list bodies as kube-apiserver gzips them, and every way one can be bad."""

import gzip

import pytest

from fleet_exporter.kube import UpstreamError, _inflate

BODY = b'{"kind":"VolumeList","items":[]}' * 1000
GZ = gzip.compress(BODY, 1)
CAP = 1 << 20


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (GZ, None, None),
        (GZ + GZ, "invalid", "data after the end of the gzip body"),
        (GZ[:-20], "invalid", "the gzip body ends early"),
        (GZ[:10] + bytes(range(200)), "invalid", "gzip body does not inflate"),
        (BODY, "invalid", "body labelled gzip is not gzip"),
        (b"", "invalid", "body labelled gzip is not gzip"),
        (gzip.compress(bytes(CAP + 1), 9), "body_too_large", "cap once inflated"),
    ],
)
def test_inflate(data: bytes, code: str | None, message: str | None) -> None:
    if code is None:
        assert _inflate(bytearray(data), CAP) == BODY
        return
    with pytest.raises(UpstreamError) as err:
        _inflate(data, CAP)
    assert err.value.code == code
    assert message in str(err.value)
