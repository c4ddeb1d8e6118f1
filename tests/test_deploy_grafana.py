"""The Grafana dashboards: generated from code, structurally sound, every query keyed on
`cluster`, and every query answering from a real Prometheus holding two clusters' data.

The history is synthetic but shaped like the exporter's output (docs/metrics.md): it is
written as OpenMetrics with timestamps and backfilled with promtool, so no scraping or
waiting is involved.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .prometheus_harness import DEPLOY, REPO, Prometheus, backfill, running_prometheus

GRAFANA = REPO / "deploy" / "grafana"
OVERVIEW = GRAFANA / "longhorn-fleet-overview.json"
TRIAGE = GRAFANA / "longhorn-cluster-triage.json"
METRIC_NAME = re.compile(r"\b((?:longhorn|probe|fleet_exporter)_[a-z0-9_]+)\b")
CONFIG = yaml.safe_load((DEPLOY / "monitoring-config.yml").read_text())
RULES = yaml.safe_load((DEPLOY / "alerts" / "longhorn-fleet.rules.yml").read_text())
# The alerts whose conditions the overview's score counts (and the triage lists): those
# about one cluster's Longhorn state. The exporter's own and the probe alerts are the
# score's probe term; LonghornClusterUnreachable's condition makes the probe fail.
SCORED = [
    r
    for g in RULES["groups"]
    if g["name"] != "longhorn-fleet-exporter"
    for r in g["rules"]
    if r["alert"] != "LonghornClusterUnreachable"
]
WEIGHT = {"critical": 100, "warning": 10}


@dataclass(frozen=True)
class PanelQuery:
    board: str
    panel: str
    panel_type: str
    expr: str
    instant: bool


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def panel_queries(board: dict) -> Iterator[PanelQuery]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield PanelQuery(
                board["uid"],
                panel["title"],
                panel["type"],
                target["expr"],
                bool(target.get("instant")),
            )


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, matcher text) of every exporter metric named in `expr`; the matcher
    text is "" when the name has no braces."""
    for m in METRIC_NAME.finditer(expr):
        rest = expr[m.end() :]
        matchers = rest[1 : rest.index("}")] if rest.startswith("{") else ""
        yield m.group(1), matchers


# -- generated from code -------------------------------------------------------------------
def test_committed_json_is_what_generate_py_writes() -> None:
    """Regenerating gives the committed bytes (needs grafana-foundation-sdk 11.6)."""
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- structure -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", [OVERVIEW, TRIAGE], ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    assert board["uid"] == path.stem
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    cluster = variables["cluster"]
    assert cluster["type"] == "query"
    # From the exporter's inventory, so the list does not shrink when probes fail.
    inventory = f"fleet_exporter_cluster_configured{{{CONFIG['exporter_selector']}}}"
    assert cluster["query"] == f"label_values({inventory}, cluster)"
    assert cluster["datasource"]["uid"] == "${datasource}"
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_overview_is_one_row_per_cluster_worst_first_with_drill_down() -> None:
    board = load(OVERVIEW)
    (tbl,) = [p for p in board["panels"] if p["type"] == "table"]
    assert tbl["options"]["sortBy"] == [{"desc": True, "displayName": "Score"}]
    transforms = [t["id"] for t in tbl["transformations"]]
    assert transforms[0] == "joinByField"
    assert tbl["transformations"][0]["options"] == {"byField": "cluster", "mode": "outer"}
    renames = tbl["transformations"][1]["options"]["renameByName"]
    assert renames["cluster"] == "Cluster"
    assert renames["Value #A"] == "Score"
    (override,) = [
        o for o in tbl["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Cluster"
    ]
    (links,) = [p["value"] for p in override["properties"] if p["id"] == "links"]
    url = links[0]["url"]
    triage_uid = load(TRIAGE)["uid"]
    assert url.startswith(f"/d/{triage_uid}/")
    assert "var-cluster=${__data.fields.Cluster}" in url
    assert "${datasource:queryparam}" in url
    assert "${__url_time_range}" in url, "the time range goes along"
    # Every trend line opens the triage of its cluster as well.
    for panel in board["panels"]:
        if panel["type"] == "timeseries":
            (link,) = panel["fieldConfig"]["defaults"]["links"]
            assert link["url"].startswith(f"/d/{triage_uid}/"), panel["title"]
            assert "var-cluster=${__field.labels.cluster}" in link["url"], panel["title"]
            assert "${__url_time_range}" in link["url"], panel["title"]
    overview_var = {v["name"]: v for v in board["templating"]["list"]}["cluster"]
    assert overview_var["multi"] and overview_var["includeAll"]
    assert overview_var["allValue"] == ".+"
    triage_var = {v["name"]: v for v in load(TRIAGE)["templating"]["list"]}["cluster"]
    assert not triage_var.get("multi") and not triage_var.get("includeAll")


@pytest.mark.parametrize(
    ("path", "matcher"),
    [(OVERVIEW, 'cluster=~"$cluster"'), (TRIAGE, 'cluster="$cluster"')],
    ids=["overview", "triage"],
)
def test_every_selector_is_scoped_to_the_cluster_variable(path: Path, matcher: str) -> None:
    for q in panel_queries(load(path)):
        found = list(selectors(q.expr))
        assert found, f"{q.panel}: no exporter metric in {q.expr!r}"
        for name, matchers in found:
            assert matcher in matchers, f"{q.panel}: {name} lacks {matcher} in {q.expr!r}"
            if name.startswith("probe_"):
                # blackbox_exporter writes probe_* too: pin the probe job.
                assert CONFIG["probe_selector"] in matchers, f"{q.panel}: {name} without job"
            if name.startswith("fleet_exporter_"):
                assert CONFIG["exporter_selector"] in matchers, f"{q.panel}: {name} without job"


def test_overview_queries_aggregate_by_cluster() -> None:
    """No overview number mixes clusters: each query groups by cluster (fleet totals are
    sums of per-cluster aggregates)."""
    for q in panel_queries(load(OVERVIEW)):
        assert re.search(r"by \(cluster[,)]", q.expr), f"{q.panel}: {q.expr!r}"


def test_triage_queries_never_group_by_cluster_names_elsewhere() -> None:
    for q in panel_queries(load(TRIAGE)):
        assert '=~"$cluster"' not in q.expr, q.panel


@pytest.mark.parametrize("path", [OVERVIEW, TRIAGE], ids=lambda p: p.stem)
def test_volume_state_uses_the_one_hot_form(path: Path) -> None:
    for q in panel_queries(load(path)):
        if "longhorn_volume_robustness" in q.expr or "longhorn_volume_state" in q.expr:
            assert "state" in q.expr, q.panel
            assert not re.search(r"\)\s*==\s*[23]\b|robustness\{[^}]*\}\s*==\s*[23]", q.expr)


def test_every_metric_in_the_dashboards_is_documented() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", (REPO / "docs" / "metrics.md").read_text()))
    for path in (OVERVIEW, TRIAGE):
        for q in panel_queries(load(path)):
            for name, _ in selectors(q.expr):
                assert name in documented, f"{q.panel}: {name} is not in docs/metrics.md"


# -- every query answers from a real Prometheus ---------------------------------------------
STEP = 60
HISTORY = 30  # samples per series


def synthetic_fleet(end: int) -> str:
    """Two clusters of exporter-shaped series, HISTORY minutes ending at `end`.
    east-1 has every kind of trouble the dashboards show, so that the condition of every
    alert that the overview's score counts holds there (EAST_1_CONDITIONS); west-2 is
    healthy. Values "age:N" are timestamps N seconds before `end`."""
    series: dict[str, list[tuple[dict[str, str], object]]] = {}

    def add(name: str, value: object, **labels: str) -> None:
        series.setdefault(name, []).append((labels, value))

    for cluster, troubled in (("east-1", True), ("west-2", False)):
        c = {"cluster": cluster}
        probe = {"job": "longhorn-fleet", "instance": cluster, **c}
        add(
            "fleet_exporter_cluster_configured",
            1,
            job="fleet-exporter",
            instance="fleet-exporter:9265",
            **c,
        )
        add("probe_success", 1, **probe)
        add("probe_duration_seconds", 2.5 if troubled else 0.4, **probe)
        add("longhorn_up", 1, **probe)
        add("longhorn_exporter_data_age_seconds", 90 if troubled else 5, **probe)
        add("longhorn_version_info", 1, version="v1.12.1" if troubled else "v1.11.2", **probe)
        for resource in ("volumes", "snapshots", "backups", "nodes"):
            failing = troubled and resource == "snapshots"
            add("longhorn_exporter_list_success", 0 if failing else 1, resource=resource, **probe)
            add("longhorn_exporter_list_duration_seconds", 0.3, resource=resource, **probe)
        for i, vol in enumerate(("pvc-a", "pvc-b", "pvc-c", "pvc-d", "pvc-e")):
            # In east-1: pvc-a faulted, never backed up for 30 h and without a backup job;
            # pvc-b degraded (rebuilding), its newest backup failed; pvc-c healthy but
            # read-only, 95 % of its capacity, too many snapshots, a backup stuck for 7 h;
            # pvc-d detached without enough usable replicas, never backed up although a
            # daily job applies; pvc-e robustness healthy, a replica cannot be scheduled.
            t = troubled
            v = {"volume": vol, "pvc": f"data-{i}", "pvc_namespace": "db", "node": "worker-1"}
            robustness = {"pvc-a": "faulted", "pvc-b": "degraded", "pvc-d": "unknown"}.get(vol)
            robustness = robustness if t and robustness else "healthy"
            attached = not (t and vol == "pvc-d")
            cap = 10 * 2**30
            add("longhorn_volume_capacity_bytes", cap, **v, **probe)
            add(
                "longhorn_volume_actual_size_bytes",
                cap * (0.95 if t and vol == "pvc-c" else 0.4),
                **v,
                **probe,
            )
            add("longhorn_volume_info", 1, backup_target="default", **v, **probe)
            for state in ("healthy", "degraded", "faulted", "unknown"):
                add(
                    "longhorn_volume_robustness",
                    int(state == robustness),
                    state=state,
                    **v,
                    **probe,
                )
            for state in ("attached", "detached"):
                add(
                    "longhorn_volume_state",
                    int(state == ("attached" if attached else "detached")),
                    state=state,
                    **v,
                    **probe,
                )
            unschedulable = t and vol == "pvc-e"
            add("longhorn_volume_healthy", 0 if t and vol != "pvc-c" else 1, **v, **probe)
            add(
                "longhorn_volume_condition",
                0 if unschedulable else 1,
                condition="scheduled",
                condition_reason="ReplicaSchedulingFailure" if unschedulable else "",
                **v,
                **probe,
            )
            add("longhorn_volume_file_system_read_only", int(t and vol == "pvc-c"), **v, **probe)
            healthy = {"faulted": 0, "degraded": 2, "unknown": 0}.get(robustness, 3)
            healthy = 2 if unschedulable else healthy
            rebuilding = 1 if robustness == "degraded" else 0
            failed = {"faulted": 3, "unknown": 2}.get(robustness, 0)
            add("longhorn_volume_replicas", 3, **v, **probe)
            add("longhorn_volume_replicas_healthy", healthy, **v, **probe)
            add("longhorn_volume_replicas_desired", 3, **v, **probe)
            add("longhorn_volume_replicas_rebuilding", rebuilding, **v, **probe)
            add("longhorn_volume_replicas_failed", failed, **v, **probe)
            add("longhorn_volume_replicas_unscheduled", int(unschedulable), **v, **probe)
            add("longhorn_volume_rebuild_progress_ratio", 0.4 if rebuilding else 1, **v, **probe)
            add("longhorn_volume_snapshots", 210 if t and vol == "pvc-c" else 12, **v, **probe)
            add("longhorn_volume_snapshots_created_total", "counter:1", **v, **probe)
            add("longhorn_volume_snapshots_removed_total", "counter:1", **v, **probe)
            add("longhorn_volume_created_timestamp_seconds", "age:259200", **v, **probe)
            if not (t and vol == "pvc-a"):
                add("longhorn_volume_backup_interval_seconds", 86400, **v, **probe)
            b = {"volume": vol, "backup_target": "default"}
            never = t and vol == "pvc-d"
            last = 0 if never else "age:108000" if t and vol == "pvc-a" else "age:3600"
            add("longhorn_backup_last_success_timestamp_seconds", last, **b, **probe)
            add("longhorn_volume_last_backup_timestamp_seconds", last, **v, **probe)
            add("longhorn_backup_last_latency_seconds", 95, **b, **probe)
            add("longhorn_backups", 0 if never else 5, state="Completed", **b, **probe)
            add("longhorn_backups", 2 if t and vol == "pvc-b" else 0, state="Error", **b, **probe)
            if t and vol == "pvc-b":
                add("longhorn_backup_last_failure_timestamp_seconds", "age:1800", **b, **probe)
            started = "age:25200" if t and vol == "pvc-c" else 0
            add("longhorn_backup_in_progress_oldest_start_timestamp_seconds", started, **b, **probe)
        target = {"backup_target": "default", **probe}
        add("longhorn_backup_target_available", 0 if troubled else 1, **target)
        add("longhorn_backup_target_last_synced_timestamp_seconds", "age:600", **target)
        for node in ("worker-1", "worker-2"):
            down = troubled and node == "worker-2"
            n = {"node": node, **probe}
            reason = "KubernetesNodeNotReady" if down else ""
            add(
                "longhorn_node_status",
                0 if down else 1,
                condition="ready",
                condition_reason=reason,
                **n,
            )
            add("longhorn_node_storage_capacity_bytes", 500 * 2**30, **n)
            add("longhorn_node_storage_usage_bytes", 300 * 2**30, **n)
            add("longhorn_node_storage_reservation_bytes", 150 * 2**30, **n)
            add("longhorn_node_storage_scheduled_bytes", 200 * 2**30, **n)
            add("longhorn_disk_capacity_bytes", 500 * 2**30, disk="disk-1", **n)
            add("longhorn_disk_usage_bytes", (450 if down else 100) * 2**30, disk="disk-1", **n)
            add(
                "longhorn_disk_status",
                0 if down else 1,
                disk="disk-1",
                condition="schedulable",
                condition_reason="DiskPressure" if down else "",
                **n,
            )
            held = {"healthy": 0, "failed": 5} if down else {"healthy": 7, "rebuilding": 1}
            for state in ("healthy", "rebuilding", "failed", "stopped"):
                add("longhorn_node_replicas", held.get(state, 0), state=state, **n)

    lines = []
    for name, items in series.items():
        for labels, value in items:
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            for i in range(HISTORY):
                t = end - (HISTORY - 1 - i) * STEP
                if isinstance(value, str) and value.startswith("counter:"):
                    sample = float(value.split(":")[1]) * i
                elif isinstance(value, str) and value.startswith("age:"):
                    sample = end - float(value.split(":")[1])
                else:
                    sample = float(value)
                lines.append(f"{name}{{{text}}} {sample} {t}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@dataclass
class Backfilled:
    prom: Prometheus
    end: int


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfilled]:
    work = tmp_path_factory.mktemp("grafana-prometheus")
    end = int(time.time()) // STEP * STEP - 10 * STEP
    storage = work / "data"
    backfill(synthetic_fleet(end), storage)
    config = work / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\n", encoding="utf-8")
    with running_prometheus(config, work, storage_dir=storage) as prom:
        yield Backfilled(prom, end)


def substitute(expr: str, cluster: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$cluster", cluster)


def all_queries() -> list[PanelQuery]:
    return [*panel_queries(load(OVERVIEW)), *panel_queries(load(TRIAGE))]


def test_the_synthetic_history_covers_every_metric_the_dashboards_use() -> None:
    written = set(re.findall(r"^([a-z_]+)\{", synthetic_fleet(0), re.MULTILINE))
    used = {name for q in all_queries() for name, _ in selectors(q.expr)}
    assert used <= written, f"add to synthetic_fleet: {sorted(used - written)}"


@pytest.mark.prometheus
@pytest.mark.parametrize(
    "q", all_queries(), ids=lambda q: f"{q.board}/{q.panel}/{q.expr[:30]}".replace(" ", "_")
)
def test_every_panel_query_returns_data(backfilled: Backfilled, q: PanelQuery) -> None:
    cluster = ".+" if q.board == "longhorn-fleet-overview" else "east-1"
    expr = substitute(q.expr, cluster)
    result = backfilled.prom.query(expr, at=backfilled.end)
    assert result, f"{q.board} / {q.panel}: no data for {expr!r}"
    if q.board == "longhorn-cluster-triage":
        for sample in result:
            assert sample["metric"].get("cluster", "east-1") == "east-1", sample
    if not q.instant:
        ranged = backfilled.prom.query_range(expr, backfilled.end - 15 * STEP, backfilled.end, STEP)
        assert ranged, f"{q.board} / {q.panel}: no range data for {expr!r}"


@pytest.mark.prometheus
def test_overview_table_has_every_cluster_in_every_column_worst_first(
    backfilled: Backfilled,
) -> None:
    board = load(OVERVIEW)
    (tbl,) = [p for p in board["panels"] if p["type"] == "table"]
    scores = {}
    for target in tbl["targets"]:
        result = backfilled.prom.query(substitute(target["expr"], ".+"), at=backfilled.end)
        clusters = sorted(s["metric"]["cluster"] for s in result)
        assert clusters == ["east-1", "west-2"], (target["refId"], clusters)
        if target["refId"] == "A":
            scores = {s["metric"]["cluster"]: float(s["value"][1]) for s in result}
    # east-1: a faulted volume and a read-only filesystem (critical, 100 each), and 16
    # objects in warning conditions (10 each): stale data, a degraded, an unhealthy and an
    # unschedulable volume, 2 below desired replicas, one near capacity, one with too many
    # snapshots, 2 overdue backups, a failing and a stuck one, the target, the node down,
    # its disk pressure and its nearly full disk.
    assert scores == {"east-1": 360.0, "west-2": 0.0}


@pytest.mark.prometheus
def test_every_scored_alert_condition_holds_in_the_troubled_cluster_only(
    backfilled: Backfilled,
) -> None:
    """The triage's "Alert conditions now" lists, per alert, how many objects meet its
    condition: east-1 has them all (so every term of the score is exercised), the healthy
    west-2 none. The same expressions make the score."""
    (panel,) = [p for p in load(TRIAGE)["panels"] if p["title"] == "Alert conditions now"]
    (target,) = panel["targets"]
    found = {}
    for cluster in ("east-1", "west-2"):
        result = backfilled.prom.query(substitute(target["expr"], cluster), at=backfilled.end)
        found[cluster] = {s["metric"]["alert"]: s["metric"]["severity"] for s in result}
    assert found["east-1"] == {r["alert"]: r["labels"]["severity"] for r in SCORED}
    assert found["west-2"] == {}


def score_expr() -> str:
    (tbl,) = [p for p in load(OVERVIEW)["panels"] if p["type"] == "table"]
    return next(t["expr"] for t in tbl["targets"] if t["refId"] == "A")


def test_the_score_counts_every_alert_condition_by_severity() -> None:
    """One term per scored alert, weighted by its severity, holding the alert's own
    expression (with the cluster filter added), plus the probe term."""
    score = score_expr()
    terms = re.split(r"\n# (Longhorn[A-Za-z]+)\n", score)
    assert terms[0].startswith("1000 * ((max by (cluster) (probe_success{")
    named = dict(zip(terms[1::2], terms[2::2], strict=True))
    assert list(named) == [r["alert"] for r in SCORED]
    for rule in SCORED:
        term = named[rule["alert"]]
        assert term.startswith(f"+ on (cluster) {WEIGHT[rule['labels']['severity']]} * ("), term
        unscoped = re.sub(r'\{cluster=~"\$cluster"\}|cluster=~"\$cluster", ', "", term)
        assert " ".join(rule["expr"].split()) in " ".join(unscoped.split()), rule["alert"]


def test_another_config_reaches_every_selector(tmp_path: Path) -> None:
    """The job selectors of deploy/monitoring-config.yml are the dashboards' too: with
    another config nothing of the default job names is left."""
    config = tmp_path / "config.yml"
    config.write_text(
        'probe_selector: job="team-a-longhorn-fleet"\n'
        'exporter_selector: job="team-a-fleet-exporter"\n'
        "runbook_base_url: https://wiki.example.com/longhorn.md\n"
    )
    generate = [sys.executable, str(GRAFANA / "generate.py")]
    result = subprocess.run(
        [*generate, "--config", str(config), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for path in (tmp_path / OVERVIEW.name, tmp_path / TRIAGE.name):
        text = path.read_text()
        board = json.loads(text)
        exprs = [q.expr for q in panel_queries(board)]
        exprs.append({v["name"]: v for v in board["templating"]["list"]}["cluster"]["query"])
        jobs = {m for e in exprs for m in re.findall(r'job="[^"]*"', e)}
        assert jobs == {'job="team-a-longhorn-fleet"', 'job="team-a-fleet-exporter"'}, path.name


@pytest.mark.prometheus
def test_cluster_variable_lists_both_clusters(backfilled: Backfilled) -> None:
    for path in (OVERVIEW, TRIAGE):
        var = {v["name"]: v for v in load(path)["templating"]["list"]}["cluster"]
        match = re.fullmatch(r"label_values\((.+), cluster\)", var["query"])
        assert match, var["query"]
        values = backfilled.prom.label_values(
            "cluster", match.group(1), start=backfilled.end - 600, end=backfilled.end
        )
        assert values == ["east-1", "west-2"]
