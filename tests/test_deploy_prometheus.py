"""deploy/prometheus: promtool accepts the shipped files, and a real Prometheus running
them discovers, relabels, shards and scrapes as documented.

The live tests put a small stand-in for the exporter's HTTP surface (/targets, /probe,
/metrics) on loopback, because what is under test here is the Prometheus side: the
relabelling, the `cluster` label, `hashmod` routing and the rule files. The end-to-end
test against the real exporter and simulated fleet reuses tests/prometheus_harness.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from .prometheus_harness import (
    DEPLOY,
    Prometheus,
    render_shipped_config,
    require_binary,
    running_prometheus,
)

PROMETHEUS = DEPLOY / "prometheus"
CLUSTERS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
FAILING = "gamma"  # answers probe_success 0 although its API server is reachable
GHOST = "omega"  # configured (in /metrics) but missing from /targets


def shard_of(cluster: str, of: int) -> int:
    """Prometheus' hashmod: md5, last 8 bytes big-endian, modulo (same as /targets?shard)."""
    return int.from_bytes(hashlib.md5(cluster.encode()).digest()[8:], "big") % of


def promtool_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- offline ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "replacements"),
    [
        ("prometheus.yml", {"EXPORTER_ADDRESS": "fleet-exporter.monitoring.svc:9265"}),
        (
            "prometheus-sharded.yml",
            {
                "EXPORTER_SHARD_0_ADDRESS": "fleet-exporter-0.fleet-exporter:9265",
                "EXPORTER_SHARD_1_ADDRESS": "fleet-exporter-1.fleet-exporter:9265",
                "EXPORTER_ADDRESS": "fleet-exporter.monitoring.svc:9265",
            },
        ),
    ],
)
def test_promtool_accepts_the_shipped_config(tmp_path, name, replacements) -> None:
    path = render_shipped_config(tmp_path, replacements, name)
    result = promtool_check_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files resolve and are checked too.
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout)


def test_exporter_address_is_the_only_placeholder() -> None:
    body = "\n".join(
        ln for ln in (PROMETHEUS / "prometheus.yml").read_text().splitlines() if "#" not in ln
    )
    assert set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", body)) == {"EXPORTER_ADDRESS"}


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-sharded.yml"])
def test_probe_job_sets_no_cluster_target_label(name: str) -> None:
    config = yaml.safe_load((PROMETHEUS / name).read_text())
    assert "cluster" not in config["global"].get("external_labels", {})
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"longhorn-fleet", "fleet-exporter"}
    probe = jobs["longhorn-fleet"]
    assert probe["metrics_path"] == "/probe"
    assert probe.get("honor_labels", False) is False
    for job in jobs.values():
        for rule in job.get("relabel_configs", []):
            assert rule.get("target_label") != "cluster", rule
        for group in job.get("static_configs", []):
            assert "cluster" not in group.get("labels", {})
    rules = probe["relabel_configs"]
    assert rules[0] == {"source_labels": ["__address__"], "target_label": "__param_cluster"}
    assert rules[1] == {"source_labels": ["__param_cluster"], "target_label": "instance"}
    assert [r.get("target_label") for r in rules].count("__address__") >= 1
    assert rules.index(next(r for r in rules if r.get("target_label") == "__address__")) > 1

    def seconds(value: str) -> float:
        return float(value.removesuffix("s"))

    assert seconds(probe["scrape_timeout"]) < seconds(probe["scrape_interval"])
    assert seconds(probe["scrape_timeout"]) > 10  # room for slow clusters (default is 10 s)


def test_sharded_config_hashes_the_cluster_not_the_exporter() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus-sharded.yml").read_text())
    (probe,) = [j for j in config["scrape_configs"] if j["job_name"] == "longhorn-fleet"]
    (hashmod,) = [r for r in probe["relabel_configs"] if r.get("action") == "hashmod"]
    assert hashmod["source_labels"] == ["__param_cluster"]
    routes = [r for r in probe["relabel_configs"] if r.get("target_label") == "__address__"]
    assert sorted(r["regex"] for r in routes) == [str(i) for i in range(hashmod["modulus"])]


# -- live: a real Prometheus against a stand-in exporter ----------------------------------------
@dataclass
class StubExporter:
    """The exporter's HTTP surface, minimal: enough to watch Prometheus use it."""

    replica: int
    url: str = ""
    probes: Counter[str] = field(default_factory=Counter)
    timeout_headers: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/targets", self.targets)
        app.router.add_get("/probe", self.probe)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def targets(self, request: web.Request) -> web.Response:
        return web.json_response([{"targets": CLUSTERS, "labels": {"env": "test"}}])

    async def probe(self, request: web.Request) -> web.Response:
        cluster = request.query.get("cluster") or request.query.get("target", "")
        if cluster not in CLUSTERS:
            return web.Response(status=400, text=f"unknown cluster {cluster!r}\n")
        self.probes[cluster] += 1
        self.timeout_headers.append(request.headers.get("X-Prometheus-Scrape-Timeout-Seconds", ""))
        c = f'cluster="{cluster}"'
        ok = 0 if cluster == FAILING else 1
        return web.Response(
            text=(
                f"probe_success{{{c}}} {ok}\n"
                f"longhorn_up{{{c}}} 1\n"
                f'stub_replica{{{c},replica="{self.replica}"}} 1\n'
                f'longhorn_volume_robustness{{{c},volume="pvc-1",state="healthy"}} 1\n'
            )
        )

    async def metrics(self, request: web.Request) -> web.Response:
        lines = [
            f'fleet_exporter_cluster_configured{{cluster="{name}"}} 1'
            for name in [*CLUSTERS, GHOST]
        ]
        lines += [f'fleet_exporter_cluster_config_ok{{cluster="{n}"}} 1' for n in CLUSTERS]
        return web.Response(text="\n".join(lines) + "\n")


@pytest.fixture
async def stubs() -> AsyncIterator[list[StubExporter]]:
    runners, out = [], []
    for replica in (0, 1):
        stub = StubExporter(replica)
        runner = web.AppRunner(stub.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stub.url = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        runners.append(runner)
        out.append(stub)
    yield out
    for runner in runners:
        await runner.cleanup()


def probe_targets(prom: Prometheus) -> list[dict]:
    return [t for t in prom.targets() if t["labels"]["job"] == "longhorn-fleet"]


def all_up(prom: Prometheus, expected: int) -> bool:
    up = prom.query('up{job=~"longhorn-fleet|fleet-exporter"} == 1')
    return len(up) == expected


@pytest.mark.prometheus
async def test_shipped_config_discovers_relabels_and_scrapes(tmp_path, stubs) -> None:
    exporter = stubs[0]
    config = render_shipped_config(
        tmp_path, {"EXPORTER_ADDRESS": exporter.url}, intervals=("1s", "900ms")
    )
    with running_prometheus(config, tmp_path / "run") as prom:
        await prom.async_wait_for(lambda: all_up(prom, len(CLUSTERS) + 1), 30, "every target up")
        targets = probe_targets(prom)
        assert sorted(t["labels"]["instance"] for t in targets) == sorted(CLUSTERS)
        for t in targets:
            name = t["labels"]["instance"]
            # instance = cluster; the SD group's labels arrive; no `cluster` target label.
            assert t["labels"] == {"job": "longhorn-fleet", "instance": name, "env": "test"}
            url = urllib.parse.urlsplit(t["scrapeUrl"])
            assert url.netloc == exporter.url and url.path == "/probe"
            assert urllib.parse.parse_qs(url.query) == {"cluster": [name]}
        # Every probe series carries cluster == instance, and nothing was renamed.
        series = await asyncio.to_thread(prom.query, '{job="longhorn-fleet"}')
        probed = [s["metric"] for s in series if not s["metric"]["__name__"].startswith("scrape_")]
        assert probed
        for m in probed:
            if m["__name__"] == "up":
                continue
            assert m["cluster"] == m["instance"], m
        assert await asyncio.to_thread(prom.query, '{exported_cluster=~".+"}') == []
        assert await asyncio.to_thread(prom.query, '{exported_instance=~".+"}') == []
        assert all(float(h) > 0 for h in exporter.timeout_headers)

        # The shipped rule file is loaded and evaluates without errors...
        groups = await prom.async_wait_for(
            lambda: (
                [g for g in prom.rules() if all(r["health"] == "ok" for r in g["rules"])]
                == prom.rules()
                and prom.rules()
            ),
            30,
            "every rule evaluated",
        )
        names = {g["name"] for g in groups}
        shipped = yaml.safe_load((DEPLOY / "alerts" / "longhorn-fleet.rules.yml").read_text())
        assert names == {g["name"] for g in shipped["groups"]}

        # ...and the per-cluster alerts for the stand-in's trouble start (pending).
        def pending() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for a in prom.alerts():
                found.setdefault(a["labels"]["alertname"], set()).add(a["labels"].get("cluster"))
            return found

        # (An evaluation from before every target was up may still be listed: wait for
        # the set to converge rather than for the first appearance.)
        expected = {
            "LonghornFleetProbeFailing": {FAILING},
            "LonghornFleetClusterNotScraped": {GHOST},
        }
        await prom.async_wait_for(
            lambda: {k: v for k, v in pending().items() if k in expected} == expected,
            30,
            f"pending alerts {expected}",
        )


@pytest.mark.prometheus
async def test_sharded_config_routes_each_cluster_to_its_hashmod_replica(tmp_path, stubs) -> None:
    config = render_shipped_config(
        tmp_path,
        {
            "EXPORTER_ADDRESS": stubs[0].url,
            "EXPORTER_SHARD_0_ADDRESS": stubs[0].url,
            "EXPORTER_SHARD_1_ADDRESS": stubs[1].url,
        },
        "prometheus-sharded.yml",
        intervals=("1s", "900ms"),
    )
    expected = {name: shard_of(name, 2) for name in CLUSTERS}
    assert set(expected.values()) == {0, 1}, "test clusters should cover both shards"
    with running_prometheus(config, tmp_path / "run") as prom:
        await prom.async_wait_for(lambda: all_up(prom, len(CLUSTERS) + 2), 30, "every target up")
        for t in probe_targets(prom):
            name = t["labels"]["instance"]
            netloc = urllib.parse.urlsplit(t["scrapeUrl"]).netloc
            assert netloc == stubs[expected[name]].url, name
            assert "__tmp_shard" not in t["labels"]
        # Each replica was asked only for its own clusters.
        for replica, stub in enumerate(stubs):
            assert set(stub.probes) == {n for n, s in expected.items() if s == replica}
        answered = await asyncio.to_thread(prom.query, "stub_replica")
        assert {m["metric"]["cluster"]: int(m["metric"]["replica"]) for m in answered} == expected


def test_readme_snippet_for_prometheus_side_sharding_is_valid(tmp_path) -> None:
    """The keep-one-shard snippet of deploy/README.md, inserted into the shipped probe job
    after its first rule, passes promtool."""
    readme = (DEPLOY / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "hashmod" in b]
    extra = yaml.safe_load(snippet)
    assert [r["action"] for r in extra] == ["hashmod", "keep"]
    assert extra[0]["source_labels"] == ["__param_cluster"]
    path = render_shipped_config(tmp_path, {"EXPORTER_ADDRESS": "fleet-exporter:9265"})
    config = yaml.safe_load(path.read_text())
    (probe,) = [j for j in config["scrape_configs"] if j["job_name"] == "longhorn-fleet"]
    probe["relabel_configs"][1:1] = extra
    path.write_text(yaml.safe_dump(config))
    result = promtool_check_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
