"""Small rules of /probe: blackbox's timeout table, content negotiation, hashmod shards."""

import hashlib

import pytest

from fleet_exporter.web.app import shard_of
from fleet_exporter.web.probe import accepts_gzip, probe_timeout, wants_openmetrics

# blackbox_exporter prober/handler_test.go TestComputeExternalTimeout, case for case:
# (module timeout, X-Prometheus-Scrape-Timeout-Seconds, offset) -> probe timeout.
BLACKBOX_TABLE = [
    (0, "15", 0.5, 14.5),
    (0, "15", 0, 15),
    (20, "15", 0.5, 14.5),
    (20, "15", 0, 15),
    (5, "15", 0, 5),
    (5, "15", 0.5, 5),
    (10, "", 0.5, 10),
    (10, "10", 0.5, 9.5),
    (9.5, "", 0.5, 9.5),
    (9.5, "", 1, 9.5),
    (0, "", 0.5, 119.5),
    (0, "", 0, 120),
]


@pytest.mark.parametrize(("module", "header", "offset", "expected"), BLACKBOX_TABLE)
def test_blackbox_timeout_table(module, header, offset, expected):
    assert probe_timeout(header, module, offset) == expected


@pytest.mark.parametrize(
    ("header", "module", "offset", "expected"),
    [
        (None, 0, 0.5, 119.5),  # header absent
        ("0", 0, 0.5, 119.5),  # 0 counts as absent
        ("1", 0, 0.5, 0.5),  # TestPrometheusTimeoutHTTP
        ("0.3", 0, 0.5, 0),  # negative limit, no module timeout: instant failure
        ("0.3", 2, 0.5, 2),  # negative limit: the module timeout wins
    ],
)
def test_timeout_edge_cases(header, module, offset, expected):
    assert probe_timeout(header, module, offset) == expected


@pytest.mark.parametrize("header", ["abc", "nan", "inf", "1e999", "10s"])
def test_malformed_timeout_header(header):
    with pytest.raises(ValueError):
        probe_timeout(header, 0, 0.5)


PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_2, True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("application/openmetrics-text", True),
        ("", False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        ("text/plain;q=1,application/openmetrics-text;version=1.0.0;q=0.1", False),
        ("application/openmetrics-text;version=0.0.1", False),
        ("application/openmetrics-text;version=1.0.0;q=0", False),
        ("application/json", False),
    ],
)
def test_openmetrics_negotiation_honours_q_values(accept, openmetrics):
    assert wants_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(
    ("value", "gzip"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate", False),
        ("gzip;q=0", False),
        ("", False),
        ("identity", False),
    ],
)
def test_gzip_negotiation(value, gzip):
    assert accepts_gzip(value) is gzip


def test_shards_match_prometheus_hashmod():
    # Prometheus: md5 of the source label value, last 8 bytes big-endian, mod N
    # (model/relabel/relabel.go). Cross-checked live against Prometheus in the deploy tests.
    names = [f"cluster-{i}" for i in range(200)]
    for n in (1, 2, 3, 7):
        shards = [shard_of(c, n) for c in names]
        assert shards == [
            int.from_bytes(hashlib.md5(c.encode()).digest()[8:], "big") % n for c in names
        ]
        assert set(shards) == set(range(n))
