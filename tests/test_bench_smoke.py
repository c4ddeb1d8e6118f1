"""The benchmark keeps working: a tiny run (three small clusters, then ten) through every
phase, with the real simulator, exporter and bare server processes. It checks that each
figure is produced and sane, not that any target is met: timing targets belong to the full
run (``fleet-exporter bench``), on a quiet machine."""

from __future__ import annotations

import json
import zlib

import pytest

from fleet_exporter import bench

pytestmark = pytest.mark.slow


async def test_quick_run_produces_every_figure(tmp_path):
    opts = bench.Options.quick(tmp_path / "results")
    result = await bench.run(opts, log=lambda msg: None)

    fleet = result["fleet"]
    assert fleet["clusters"] == 3
    assert fleet["volumes"] == sum(r["volumes"] for r in fleet["cold"])
    for row in fleet["cold"]:
        assert row["floor_s"] > 0
        assert row["probe_s"] > 0
        assert row["cpu_s"] > 0
        assert row["ratio"] == pytest.approx(row["probe_s"] / row["floor_s"])
    assert fleet["cpu_fit_per_1000_volumes"]["slope"] > 0
    for warm in fleet["warm"]:
        assert 0 < warm["probe_p50_ms"] <= warm["probe_p99_ms"]
        assert 0 < warm["bare_p50_ms"] <= warm["bare_p99_ms"]
        assert warm["bytes"] > 0
    for sweep in fleet["sweeps"]:
        assert sweep["probes"] == 6  # 3 clusters x 2 scrapers
        assert sweep["ok_in_time"] == sweep["probes"]
        assert 0 < sweep["seconds"] < bench.SCRAPE_TIMEOUT
        assert sweep["cpu_s"] > 0
        assert sweep["max_stall_ms"] >= 0
    assert 0 < fleet["empty_rss_mb"] <= fleet["steady_rss_mb"] <= fleet["peak_rss_mb"]
    assert [p["clusters"] for p in fleet["fill"]][-1] == 3

    many = result["many"]
    assert many["clusters"] == 10
    for spread in many["spread"]:
        assert spread["ok_in_time"] == spread["probes"] == 20
        assert spread["cpu_s_per_refresh"] > 0
    assert many["steady_rss_mb"] > 0
    assert result["sizing"]["by_cluster_volumes"]["100"]["clusters_per_replica"] > 0

    paths = bench.write_results(result, opts)
    assert json.loads(paths["json"].read_text())["fleet"]["cold"] == fleet["cold"]
    table = paths["table"].read_text()
    assert table.startswith("machine: ")
    for figure in ("cold probe, ", "warm probe, ", "sweep 3 clusters x 2 scrapers", "RSS, 3"):
        assert figure in table
    png = paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (720, 440)
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (1 + width * 3)


def test_continue_token_found_in_the_tail():
    page = (
        b'{"apiVersion":"v1","items":[{"metadata":{"continue":"x"}}],'
        b'"metadata":{"continue":"abc","resourceVersion":"1"}}'
    )
    assert bench._continue_token(page) == "abc"
    assert bench._continue_token(b'{"items":[],"metadata":{"resourceVersion":"1"}}') == ""


def test_probe_success_reads_multi_member_gzip():
    head = zlib.compressobj(1, zlib.DEFLATED, 31)
    body = b'probe_success{cluster="a"} 1.0\n'
    gz = head.compress(body) + head.flush()
    tail = zlib.compressobj(1, zlib.DEFLATED, 31)
    gz += tail.compress(b"# EOF\n") + tail.flush()
    assert bench._probe_success(gz, gzipped=True)
    assert not bench._probe_success(b'probe_success{cluster="a"} 0.0\n', gzipped=False)


def test_fit_and_percentile():
    fit = bench._fit([(0, 1), (1, 3), (2, 5)])
    assert fit["slope"] == pytest.approx(2)
    assert fit["intercept"] == pytest.approx(1)
    assert fit["r2"] == pytest.approx(1)
    values = list(range(1, 101))
    assert bench._pct(values, 50) == 50
    assert bench._pct(values, 99) == 99
