"""The exporter's own ``/metrics``: bounded series per cluster, one rendering a second
shared by every poller, valid in both formats, and the same metrics as docs/metrics.md
says."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from fleet_exporter.config import ConfigError
from fleet_exporter.knobs import RENDER_INTERVAL
from fleet_exporter.limits import MemoryBudget
from fleet_exporter.selfmetrics import (
    SelfMetrics,
    code_label,
    registry_families,
)
from simulator.fleet import ClusterSpec

from .conftest import started_env
from .test_admission import tiny_fleet
from .test_promtool_metrics import check_metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
OPENMETRICS = {"Accept": "application/openmetrics-text;version=1.0.0"}


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def documented_slope() -> int:
    found = re.search(r"Series per cluster on `/metrics`: \*\*(\d+)\*\*", DOC.read_text())
    assert found, "docs/metrics.md states the series per cluster"
    return int(found[1])


async def fleet_series(tmp_path: Path, n: int) -> int:
    """Series on /metrics once every one of ``n`` healthy clusters was probed twice."""
    tmp_path.mkdir()
    async with started_env(tmp_path, tiny_fleet(n)) as env:
        for _ in range(2):
            for status, *_ in await asyncio.gather(*(env.probe(s.name) for s in tiny_fleet(n))):
                assert status == 200
        _, text, _ = await env.get("/metrics")
        assert f'fleet_exporter_probes_total{{cluster="c{n - 1:03d}",result="success"}} 2.0' in text
        return len(series(text))


async def test_series_per_cluster_are_bounded(tmp_path: Path) -> None:
    one = await fleet_series(tmp_path / "one", 1)
    fifty = await fleet_series(tmp_path / "fifty", 50)
    slope = (fifty - one) / 49
    assert slope == documented_slope() == 11
    assert one < 200  # the fleet-wide part is small and fixed


def test_a_cluster_cannot_grow_its_series_with_new_status_codes() -> None:
    metrics = SelfMetrics()
    metrics.set_clusters({"hostile": True})
    for status in range(100, 1000):
        metrics.upstream_call("hostile", "volumes", str(status))
    for code in ("timeout", "tls", "dns", "connect", "reset", "auth", "redirect", "invalid"):
        metrics.upstream_call("hostile", "volumes", code)
    metrics.upstream_call("hostile", "volumes", "body_too_large")
    metrics.upstream_call("hostile", "volumes", "memory")
    codes = set(metrics.cluster_stats["hostile"].upstream)
    assert len(codes) == 21 + 3 + 10  # docs/metrics.md: "at most 44 in all", 10 + 34
    assert {"200", "403", "410", "429", "503", "4xx", "5xx", "other"} <= codes
    assert (code_label("418"), code_label("599"), code_label("302")) == ("4xx", "5xx", "other")


async def test_body_is_rendered_at_most_once_a_second(tmp_path: Path) -> None:
    async with started_env(tmp_path, tiny_fleet(2)) as env:
        await env.probe("c000")

        async def raw(**headers: str) -> bytes:
            async with env.session.get(
                env.url + "/metrics", headers=headers, auto_decompress=False
            ) as r:
                return await r.read()

        identity = {"Accept-Encoding": "identity"}
        gz, plain = await raw(**{"Accept-Encoding": "gzip"}), await raw(**identity)
        rendered = time.monotonic()
        assert gz[:2] == b"\x1f\x8b" and plain.startswith(b"# HELP")
        await env.probe("c001")  # a change within the second is not shown yet
        assert await raw(**{"Accept-Encoding": "gzip"}) == gz
        assert await raw(**identity) == plain
        assert b'probes_total{cluster="c001",result="success"} 0.0' in plain
        assert time.monotonic() - rendered < RENDER_INTERVAL, "the machine is too slow"
        await asyncio.sleep(RENDER_INTERVAL)
        fresh = await raw(**identity)
        assert fresh != plain
        assert b'probes_total{cluster="c001",result="success"} 1.0' in fresh


async def test_a_reload_shows_at_once(tmp_path: Path) -> None:
    """Whoever reloads and then reads /metrics sees the reload, failed or not."""
    async with started_env(tmp_path, tiny_fleet(1)) as env:
        _, text, _ = await env.get("/metrics")
        assert "fleet_exporter_config_last_reload_successful 1.0" in text
        (env.clusters / "fleet.yaml").write_text("defaults: {nonsense: 1}\n")
        with pytest.raises(ConfigError):
            await env.fleet.reload()
        _, text, _ = await env.get("/metrics")
        assert "fleet_exporter_config_last_reload_successful 0.0" in text
        (env.clusters / "fleet.yaml").unlink()
        await env.fleet.reload()
        _, text, _ = await env.get("/metrics")
        assert "fleet_exporter_config_last_reload_successful 1.0" in text
        assert 'fleet_exporter_config_reloads_total{result="success",trigger="signal"} 1.0' in text


async def test_both_formats_parse_and_promtool_finds_nothing(tmp_path: Path) -> None:
    specs = [*tiny_fleet(2), ClusterSpec(name="forbidden", volumes=2, faults={"nodes": "403"})]
    async with started_env(tmp_path, specs) as env:
        for spec in specs:
            await env.probe(spec.name)
        _, text, headers = await env.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        code, findings = check_metrics(text.encode())
        assert (code, findings) == (0, [])
        _, om, headers = await env.get("/metrics", headers=OPENMETRICS)
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert om.endswith("# EOF\n")
        families = {f.name: f for f in om_parse(om)}
        assert families["fleet_exporter_probes"].type == "counter"
        assert families["fleet_exporter_probe_duration_seconds"].type == "histogram"
        # The same samples in both formats.
        text_samples = {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        om_samples = {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families.values()
            for s in f.samples
        }
        assert text_samples == om_samples
        assert 'fleet_exporter_upstream_requests_total{cluster="forbidden",code="403"} 1.0' in text


def test_fleet_wide_part_is_what_prometheus_client_writes() -> None:
    """``registry_families`` encodes prometheus_client's metrics itself (its OpenMetrics
    encoder was the slowest part); the samples are prometheus_client's, less ``_created``."""
    metrics = SelfMetrics()
    metrics.set_clusters({"a": True, "b": False})
    metrics.probe_done("a", True, 0.3)
    metrics.refresh_done("a", 0.2, time.time())
    metrics.upstream_call("a", "volumes", "200")
    metrics.rejected.labels("overloaded").inc()
    ours = "".join(f.text_meta + f.samples for f in registry_families(metrics.registry))
    theirs = generate_latest(metrics.registry).decode()

    def stable(text: str) -> set[tuple]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.name.endswith("_created") and not s.name.startswith("process_")
        }

    assert stable(ours) == stable(theirs)
    assert "process_cpu_seconds_total" in ours


def doc_rows() -> dict[str, tuple[str, frozenset[str]]]:
    text = DOC.read_text()
    section = text[text.index("## The exporter's own metrics") :]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `") or line.startswith("| `process_*`"):
            continue
        name, kind, labels, _meaning = (c.strip() for c in line.strip().strip("|").split("|"))
        names = re.findall(r"`([a-z_]+)`", re.sub(r"\(.*?\)", "", labels))
        rows[name.strip("`")] = (kind, frozenset(names))
    return rows


async def test_docs_list_exactly_the_metrics_emitted() -> None:
    metrics = SelfMetrics()
    metrics.set_clusters({"a": True})
    metrics.probe_done("a", True, 0.3)
    metrics.cache_request("a", "miss")
    metrics.refresh_done("a", 0.2, time.time())
    metrics.upstream_call("a", "volumes", "200")
    metrics.watch_budget(MemoryBudget(1 << 20))
    text = metrics.exposition(openmetrics=False, gzipped=False).decode()
    emitted = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        emitted[name] = (family.type, frozenset(labels))
    assert emitted == doc_rows()
