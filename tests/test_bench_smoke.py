"""The benchmark keeps working: a tiny run (three small clusters, then ten) through every
phase, with the real simulator, exporter and bare server processes. It checks that each
figure is produced and sane, not that any target is met: timing targets belong to the full
run (``make bench``), on a quiet machine. Also: the rendering the benchmark led
to (gzip members per format) serves exactly what the encoder writes."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import pytest

import bench
from bench import common, driver
from fleet_exporter import knobs, scheduling
from fleet_exporter.exposition import Family, encode
from fleet_exporter.longhorn.wire import to_number


@pytest.mark.slow
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
        assert row["decode_floor_s"] > 0
        assert row["decode_ratio"] == pytest.approx(row["decode_floor_s"] / row["floor_s"])
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
    figures = (
        "cold probe, ",
        "decode-only client",
        "warm probe, ",
        "sweep 3 clusters x 2 scrapers",
    )
    for figure in (*figures, "RSS, 3"):
        assert figure in table
    png = paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (720, 440)
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (1 + width * 3)


@pytest.mark.slow
async def test_quick_fault_run_measures_every_fault(tmp_path):
    """``bench faults --quick``: 6 clusters, 2 of them sick with each fault in turn. Every
    scenario is measured and tabled; whether targets are met is the full run's business,
    but the healthy clusters' probes must all have answered here too."""
    from bench import faults

    opts = bench.Options.quick(tmp_path / "results")
    result = await faults.run(opts, tmp_path, faults.QUICK, faults.FAULTS, lambda msg: None)
    (size,) = result["sizes"]
    assert [sc["fault"] for sc in size["scenarios"]] == ["none", *faults.FAULTS]
    for sc in size["scenarios"]:
        assert sc["healthy_probes"] > 0 and sc["healthy_ok"] == sc["healthy_probes"], sc
        assert sc["faulty_answered_in_time"] == sc["faulty_probes"], sc
        assert sc["peak_rss_mb"] > 0 and sc["budget_mb"] == 128
    assert size["metrics_polled"]["metrics_gets"] > 0
    assert size["nofile_1024"]["healthy_ok"] == size["nofile_1024"]["healthy_probes"]
    rows = faults.table(result)  # a row per scenario, then /metrics and the open-file limit
    assert len(rows) == 1 + 1 + len(faults.FAULTS) + 2
    assert all(r[-1] in ("PASS", "FAIL") for r in rows[1:])


def test_continue_token_found_in_the_tail():
    page = (
        b'{"apiVersion":"v1","items":[{"metadata":{"continue":"x"}}],'
        b'"metadata":{"continue":"abc","resourceVersion":"1"}}'
    )
    assert driver._continue_token(page) == "abc"
    assert driver._continue_token(b'{"items":[],"metadata":{"resourceVersion":"1"}}') == ""


def test_probe_success_reads_multi_member_gzip():
    head = zlib.compressobj(1, zlib.DEFLATED, 31)
    body = b'probe_success{cluster="a"} 1.0\n'
    gz = head.compress(body) + head.flush()
    tail = zlib.compressobj(1, zlib.DEFLATED, 31)
    gz += tail.compress(b"# EOF\n") + tail.flush()
    assert driver._probe_success(gz, gzipped=True)
    assert not driver._probe_success(b'probe_success{cluster="a"} 0.0\n', gzipped=False)


def test_fit_and_percentile():
    fit = common._fit([(0, 1), (1, 3), (2, 5)])
    assert fit["slope"] == pytest.approx(2)
    assert fit["intercept"] == pytest.approx(1)
    assert fit["r2"] == pytest.approx(1)
    values = list(range(1, 101))
    assert common._pct(values, 50) == 50
    assert common._pct(values, 99) == 99


async def test_cpu_turn_takes_turns_and_survives_errors_and_cancellation():
    """Sliced computations share the loop's CPU turn; one that raises or is cancelled
    while waiting does not keep the others from finishing."""
    order: list[str] = []

    def steps(name: str, n: int, fail: bool = False):
        for i in range(n):
            order.append(f"{name}{i}")
            time.sleep(knobs.SLICE)  # each step uses up a whole slice
            yield
        if fail:
            raise ValueError(name)
        return name

    a = asyncio.create_task(scheduling.run_sliced(steps("a", 3)))
    b = asyncio.create_task(scheduling.run_sliced(steps("b", 3, fail=True)))
    c = asyncio.create_task(scheduling.run_sliced(steps("c", 3)))
    await asyncio.sleep(0)
    c.cancel()
    assert await asyncio.wait_for(a, 5) == "a"
    with pytest.raises(ValueError, match="b"):
        await asyncio.wait_for(b, 5)
    with pytest.raises(asyncio.CancelledError):
        await c
    # One slice per turn, first come first served: a took its first slice before b and c
    # asked, so it was queued first; then a and b alternate (c's cancelled turn skipped).
    assert order == ["a0", "a1", "b0", "a2", "b1", "b2"]
    # The turn is free again: a new computation runs at once.
    assert await asyncio.wait_for(scheduling.run_sliced(steps("d", 1)), 1) == "d"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" 42 ", 42.0),
        ("9007199254740993", float(9007199254740993)),  # rounds as float(int(...)) does
        ("1_000", None),  # float() takes it; Go's ParseInt (and so Kubernetes) does not
        ("1" + "0" * 400, None),  # too big for a float: no OverflowError, just no number
        ("-0", 0.0),
        ("0x10", None),
    ],
)
def test_to_number_single_float_call_keeps_its_meaning(raw, expected):
    assert to_number(raw) == expected


def test_label_escaping_fast_path_matches_prometheus_client():
    values = ["plain", 'q"uote', "back\\slash", "new\nline", "ünïcode", "50%"]
    families = [Family("m", "gauge", "h", ("v",), [((v,), 1.0) for v in values])]
    text = encode(families, 'c"1', eof=False).decode()
    for v in values:
        escaped = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        assert f'm{{cluster="c\\"1",v="{escaped}"}} 1.0\n' in text
