"""What every client gets from /probe: the same text whether it takes gzip or not, and a
gzip answer that a reader of one member reads whole (curl, browsers and many HTTP
libraries stop after the first member; Prometheus' Go reader happens to read them all).

Real sockets, a real ``curl --compressed``, and a decoder that reads exactly one member.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import zlib

import pytest

from simulator.fleet import ClusterSpec, sized_fleet

from .conftest import BackgroundEnv

SMALL, BIG = "small", "big"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
# Per-probe values that differ between two probes of the same refresh.
VOLATILE = re.compile(rb"^(probe_duration_seconds|longhorn_exporter_data_age_seconds)\{.*$", re.M)


def specs() -> list[ClusterSpec]:
    return [
        ClusterSpec(name=SMALL, volumes=3, nodes=2, seed=1),
        # The benchmark's biggest cluster (2,000 volumes, 97 MB of JSON, ~16 MB of text in
        # hundreds of deflate pieces): many inflate steps for a plain client.
        dataclasses.replace(sized_fleet(1)[0], name=BIG),
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with BackgroundEnv(tmp_path_factory.mktemp("answers"), specs()) as e:
        yield e


def curl(*args: str) -> bytes:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is not installed: apt-get install -y --no-install-recommends curl")
    return subprocess.run([path, "-sS", "--fail", *args], capture_output=True, check=True).stdout


def one_member(data: bytes) -> bytes:
    d = zlib.decompressobj(31)
    out = d.decompress(data)
    assert d.eof and d.unused_data == b"", "not exactly one gzip member"
    return out


def normal(text: bytes) -> bytes:
    return VOLATILE.sub(b"", text)


@pytest.mark.parametrize("cluster", [SMALL, BIG])
@pytest.mark.parametrize("accept", ["text", "openmetrics"])
def test_gzip_and_plain_answers_hold_the_same_text(env, cluster, accept):
    url = f"{env.url}/probe?cluster={cluster}"
    headers = ["-H", f"Accept: {OPENMETRICS}"] if accept == "openmetrics" else []
    env.fleet.cache.forget(cluster)
    # Cold: this probe runs the refresh; curl reads one member, as browsers do.
    cold = curl("--compressed", *headers, url)
    raw = curl("-H", "Accept-Encoding: gzip", *headers, url)  # warm, as sent
    plain = curl(*headers, url)  # warm, no gzip: inflated while written
    warm = one_member(raw)
    assert normal(cold) == normal(plain) == normal(warm)
    assert plain.count(b"\nprobe_success{") == 1 and plain.endswith(b"\n")
    volumes = {SMALL: 3, BIG: 2000}[cluster]
    assert plain.count(b"\nlonghorn_volume_capacity_bytes{") == volumes
    if accept == "openmetrics":
        assert plain.endswith(b"# EOF\n") and plain.count(b"# EOF") == 1
    else:
        assert b"# EOF" not in plain


def test_lengths_and_head_requests(env):
    url = f"{env.url}/probe?cluster={BIG}"
    for encoding in ("gzip", "identity"):
        answer = curl("-i", "-H", f"Accept-Encoding: {encoding}", url)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: (\d+)", head).group(1))
        assert len(body) == length
        head_only = curl("-I", "-H", f"Accept-Encoding: {encoding}", url)
        assert re.search(rb"(?im)^content-length: \d+", head_only)
