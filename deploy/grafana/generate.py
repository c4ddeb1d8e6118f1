#!/usr/bin/env python3
"""Generate the two Grafana dashboards of fleet-exporter from code.

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python3 deploy/grafana/generate.py [--config FILE] [--out-dir DIR] [--check]

- longhorn-fleet-overview.json: the fleet at a glance. One table row per cluster, worst
  first, each cluster name linking to the triage dashboard with that cluster selected and
  the time range kept.
- longhorn-cluster-triage.json: one cluster (variable `cluster`), for the person on call.

Job selectors come from deploy/monitoring-config.yml, the same file the alert rules are
generated from (`--config` takes another). The worst-first score and the alert-condition
columns and panels are built from the alert rules themselves (rendered with the same
config), so they count exactly what alerts, without the rules' `for:` wait.

Built with grafana-foundation-sdk, Grafana's own generated builders, pinned to the
Grafana 11.6 flavour (pip's "latest" is the older 10.1 flavour: see fleet-monitoring.md).
The JSON files are committed so that nobody needs the SDK to import them; a test fails
when they differ from what this script generates (`--check` exits 1).

Query conventions (tested by tests/test_deploy_grafana.py):
- Every Longhorn series carries `cluster`. The triage dashboard filters every selector
  with cluster="$cluster"; the overview filters with cluster=~"$cluster" and aggregates
  by (cluster), so that no number ever mixes clusters.
- The cluster list comes from fleet_exporter_cluster_configured (the exporter's
  inventory), so it does not shrink when a cluster's probe fails.
- Volume state uses the one-hot form of Longhorn 1.11+ ({state="faulted"} == 1).
- probe_success and probe_duration_seconds are also written by other probe exporters
  (blackbox): they are selected with the probe job's selector.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import monitoring_config as mc  # noqa: E402

OVERVIEW_UID = "longhorn-fleet-overview"
TRIAGE_UID = "longhorn-cluster-triage"

# Fragments shared by several queries (the long names would not fit a line).
ROBUSTNESS = "longhorn_volume_robustness"
LAST_BACKUP = "longhorn_backup_last_success_timestamp_seconds"
UNHEALTHY = 'state=~"faulted|degraded"'
ERRORED = 'state=~"(?i)error"'
VOL_TARGET = "volume, backup_target"
INVENTORY = "fleet_exporter_cluster_configured"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["longhorn", "fleet-exporter"]
TRIAGE_URL = f"/d/{TRIAGE_UID}/{TRIAGE_UID}?${{datasource:queryparam}}&${{__url_time_range}}"
# The overview's table rows (cell of column Cluster) and time series (label of the series).
TRIAGE_LINK = TRIAGE_URL + "&var-cluster=${__data.fields.Cluster}"
TRIAGE_SERIES_LINK = TRIAGE_URL + "&var-cluster=${__field.labels.cluster}"

# Alert conditions that the overview's score counts and the triage lists: every alert of
# these groups. The exporter's and the probe's own alerts are the score's probe term.
SCORED_GROUPS = ("longhorn-clusters", "longhorn-volumes", "longhorn-backups", "longhorn-nodes")
# Its condition (longhorn_up 0) makes the probe fail, which the probe term counts.
COUNTED_BY_PROBE = {"LonghornClusterUnreachable"}
WEIGHT = {"critical": 100, "warning": 10}
PROBE_WEIGHT = 1000
METRIC = re.compile(r"\b((?:longhorn|probe|fleet_exporter)_[a-z0-9_]+)(?:\{([^}]*)\})?")


@dataclass(frozen=True)
class Setup:
    """What the dashboards depend on: the job selectors, and the alert rules."""

    probe: str  # matchers of the probe job, e.g. job="longhorn-fleet"
    exporter: str  # matchers of the exporter's own job
    alerts: list[dict[str, Any]]

    @classmethod
    def of(cls, config: mc.Config) -> Setup:
        rules = mc.alert_rules_of(mc.render_rules(config))
        return cls(config.probe_selector, config.exporter_selector, rules)

    def conditions(self) -> list[dict[str, Any]]:
        """The alert rules whose conditions the score counts, in rule-file order."""
        return [
            r
            for r in self.alerts
            if r["group"] in SCORED_GROUPS and r["alert"] not in COUNTED_BY_PROBE
        ]

    def condition(self, alert: str, matcher: str) -> str:
        """The expression of `alert`, every exporter metric in it narrowed by `matcher`."""
        (rule,) = [r for r in self.conditions() if r["alert"] == alert]
        return scoped(rule["expr"], matcher)


def scoped(expr: str, matcher: str) -> str:
    """`expr` with `matcher` added to the selector of every exporter metric in it."""

    def add(m: re.Match[str]) -> str:
        inner = m.group(2)
        return f"{m.group(1)}{{{matcher}{', ' + inner if inner else ''}}}"

    return METRIC.sub(add, expr.strip())


def block(expr: str, indent: int = 2) -> str:
    return textwrap.indent(expr, " " * indent)


# --- small builders ---------------------------------------------------------------------
def query(
    expr: str, ref: str, legend: str = "", *, instant: bool = False, as_table: bool = False
) -> prometheus.Dataquery:
    """A Prometheus query on the dashboard's data source. Tables take instant queries in
    table format (labels become columns); stats take instant queries."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant or as_table:
        q = q.instant()
    if as_table:
        q = q.format("table")
    return q


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )


OK_FAIL = [
    dash_m.ValueMap(
        {
            "0": dash_m.ValueMappingResult(text="FAIL", color="red", index=0),
            "1": dash_m.ValueMappingResult(text="OK", color="green", index=1),
        }
    )
]
GOOD_IS_ONE = thresholds((None, "red"), (1, "green"))
BAD_ABOVE_ZERO = thresholds((None, "green"), (1, "red"))


def stat_panel(
    title: str,
    expr: str,
    description: str,
    *,
    unit: str = "none",
    steps: dash.ThresholdsConfig = BAD_ABOVE_ZERO,
    ok_fail: bool = False,
    text_name: bool = False,
    width: int = 4,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, "A", legend="{{version}}" if text_name else "", instant=True))
        .unit(unit)
        .thresholds(steps)
        .color_mode(
            common_m.BigValueColorMode.BACKGROUND
            if not text_name
            else common_m.BigValueColorMode.NONE
        )
        .graph_mode(common_m.BigValueGraphMode.NONE)
        .text_mode(common_m.BigValueTextMode.NAME if text_name else common_m.BigValueTextMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(width)
    )
    if ok_fail:
        p = p.mappings(OK_FAIL)
    return p


def series_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    max_value: float | None = None,
    links: Sequence[dash.DashboardLink] = (),
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common_m.LegendDisplayMode.TABLE)
            .placement(common_m.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .height(height)
        .span(width)
    )
    if max_value is not None:
        p = p.max(max_value)
    if links:
        p = p.data_links(list(links))
    for t in targets:
        p = p.with_target(t)
    return p


def organize(renames: dict[str, str], hidden: Sequence[str] = ()) -> dash_m.DataTransformerConfig:
    """Hide the time columns (and `hidden`), rename the rest, keep the given order."""
    exclude = {"Time": True, **{f"Time {i}": True for i in range(1, 21)}}
    exclude.update({name: True for name in hidden})
    return dash_m.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": exclude,
            "renameByName": renames,
            "indexByName": {name: i for i, name in enumerate(renames)},
        },
    )


def table_panel(
    title: str,
    description: str,
    columns: Sequence[tuple[str, str, str]],
    *,
    key_renames: dict[str, str],
    join_on: str | None,
    sort_by: str,
    sort_desc: bool = True,
    width: int = 24,
    height: int = 10,
) -> table.Panel:
    """A table of instant queries. `columns` is (title, unit, expr); each query's value
    column becomes that title. With `join_on`, frames are joined on that label (rows keep
    every value of it); without, frames that share all labels are merged."""
    refs = [chr(ord("A") + i) for i in range(len(columns))]
    renames = dict(key_renames)
    renames.update(
        {f"Value #{ref}": title for ref, (title, _u, _e) in zip(refs, columns, strict=True)}
    )
    p = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .height(height)
        .span(width)
        .sort_by([common_b.TableSortByFieldState().display_name(sort_by).desc(sort_desc)])
    )
    for ref, (_title, _unit, expr) in zip(refs, columns, strict=True):
        p = p.with_target(query(expr, ref, as_table=True))
    if join_on:
        p = p.with_transformation(
            dash_m.DataTransformerConfig(
                id_val="joinByField", options={"byField": join_on, "mode": "outer"}
            )
        )
    else:
        p = p.with_transformation(dash_m.DataTransformerConfig(id_val="merge", options={}))
    p = p.with_transformation(organize(renames))
    for title, unit, _expr in columns:
        if unit != "none":
            p = p.override_by_name(title, [dash_m.DynamicConfigValue(id_val="unit", value=unit)])
    return p


def cluster_variable(exporter: str, multi: bool) -> dash.QueryVariable:
    """The clusters of the exporter's inventory (its own job), so that the list does not
    shrink when a cluster's probe fails."""
    v = (
        dash.QueryVariable("cluster")
        .label("Cluster")
        .datasource(DATASOURCE)
        .query(f"label_values({INVENTORY}{{{exporter}}}, cluster)")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        # ".+" rather than ".*": series without a cluster label never join the fleet.
        v = (
            v.multi(True)
            .include_all(True)
            .all_value(".+")
            .current(dash_m.VariableOption(selected=True, text="All", value="$__all"))
        )
    return v


def datasource_variable() -> dash.DatasourceVariable:
    return dash.DatasourceVariable("datasource").label("Data source").type("prometheus")


def board(title: str, uid: str, description: str, setup: Setup, *, multi: bool) -> dash.Dashboard:
    """A dashboard with the common settings, the two variables and a link to the other."""
    other_title, other_uid = (
        ("Cluster triage", TRIAGE_UID) if uid == OVERVIEW_UID else ("Fleet overview", OVERVIEW_UID)
    )
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(cluster_variable(setup.exporter, multi=multi))
        .link(link(other_title, f"/d/{other_uid}/{other_uid}"))
    )


def link(title: str, url: str) -> dash.DashboardLink:
    return (
        dash.DashboardLink(title)
        .type(dash_m.DashboardLinkType.LINK)
        .url(url)
        .include_vars(False)
        .keep_time(True)
        .as_dropdown(False)
        .target_blank(False)
        .tags([])
        .icon("dashboard")
        .tooltip("")
    )


def data_link(title: str, url: str) -> dash.DashboardLink:
    """A link on a panel's values (the clicked series or cell fills in the url)."""
    return dash.DashboardLink(title).url(url)


# --- the fleet overview -----------------------------------------------------------------
def overview(setup: Setup) -> dash.Dashboard:
    c = 'cluster=~"$cluster"'
    probe = f"{setup.probe}, {c}"
    inventory = f"max by (cluster) ({INVENTORY}{{{setup.exporter}, {c}}})"
    zero = f"0 * {inventory}"

    def or_zero(expr: str) -> str:
        """Every configured cluster gets a row: 0 where `expr` has no value."""
        return f"({expr}) or on (cluster) ({zero})"

    def alerting(alert: str) -> str:
        """Objects of each cluster that meet `alert`'s condition now (0 where none)."""
        return or_zero(f"count by (cluster) (\n{block(setup.condition(alert, c))}\n)")

    probe_failed = (
        f"(max by (cluster) (probe_success{{{probe}}}) == bool 0) or on (cluster) (1 + {zero})"
    )
    terms = [f"{PROBE_WEIGHT} * ({probe_failed})"]
    for rule in setup.conditions():
        weight = WEIGHT[rule["labels"]["severity"]]
        terms.append(
            f"# {rule['alert']}\n+ on (cluster) {weight} * (\n{block(alerting(rule['alert']))}\n)"
        )
    score = "\n".join(terms)
    faulted = f'count by (cluster) (longhorn_volume_robustness{{{c}, state="faulted"}} == 1)'
    degraded = f'count by (cluster) (longhorn_volume_robustness{{{c}, state="degraded"}} == 1)'
    nodes_down = f'count by (cluster) (longhorn_node_status{{{c}, condition="ready"}} == 0)'
    clusters_table = table_panel(
        "Clusters, worst first",
        f"One row per configured cluster. Score = {PROBE_WEIGHT} when the probe fails or "
        f"the cluster is not scraped, + {WEIGHT['critical']} per object in the condition of "
        f"a critical alert (a faulted volume, a read-only filesystem), + {WEIGHT['warning']} "
        "per object in the condition of a warning alert (volumes, backups, backup targets, "
        "nodes, disks, stale data): the alert rules' own expressions, counted as soon as "
        "they hold, without their `for:` wait. Click a cluster to open its triage "
        "dashboard for the same time range.",
        [
            ("Score", "none", score),
            ("Probe", "none", f"max by (cluster) (probe_success{{{probe}}})"),
            ("Longhorn API", "none", f"max by (cluster) (longhorn_up{{{c}}})"),
            ("Data age", "s", f"max by (cluster) (longhorn_exporter_data_age_seconds{{{c}}})"),
            ("Volumes", "none", f"count by (cluster) (longhorn_volume_capacity_bytes{{{c}}})"),
            ("Faulted", "none", or_zero(faulted)),
            ("Degraded", "none", or_zero(degraded)),
            ("Nodes not ready", "none", or_zero(nodes_down)),
            ("Backups failing", "none", alerting("LonghornBackupFailed")),
            ("Backups overdue", "none", alerting("LonghornBackupOverdue")),
            ("Backups stuck", "none", alerting("LonghornBackupStuck")),
            ("Targets down", "none", alerting("LonghornBackupTargetUnavailable")),
            (
                "Oldest last backup",
                "s",
                f"max by (cluster) (time() - ({LAST_BACKUP}{{{c}}} > 0))",
            ),
            ("Version", "none", f"max by (cluster, version) (longhorn_version_info{{{c}}})"),
        ],
        key_renames={"cluster": "Cluster", "version": "Longhorn version"},
        join_on="cluster",
        sort_by="Score",
        height=14,
    )
    # The version query's value (always 1) is not a column; its `version` label is.
    clusters_table = (
        clusters_table.with_transformation(
            dash_m.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Version": True}}
            )
        )
        .override_by_name(
            "Cluster",
            [
                dash_m.DynamicConfigValue(
                    id_val="links",
                    value=[{"title": "Triage ${__data.fields.Cluster}", "url": TRIAGE_LINK}],
                )
            ],
        )
        .override_by_name(
            "Probe",
            [
                dash_m.DynamicConfigValue(id_val="mappings", value=[m.to_json() for m in OK_FAIL]),
                dash_m.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-text"}
                ),
            ],
        )
        .override_by_name(
            "Longhorn API",
            [
                dash_m.DynamicConfigValue(id_val="mappings", value=[m.to_json() for m in OK_FAIL]),
                dash_m.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-text"}
                ),
            ],
        )
    )
    # A click on a cluster's line opens its triage dashboard too.
    to_triage = [data_link("Triage ${__field.labels.cluster}", TRIAGE_SERIES_LINK)]

    fleet_count = f"count({inventory})"
    return (
        board(
            "Longhorn fleet overview",
            OVERVIEW_UID,
            "Longhorn health of every cluster that fleet-exporter probes.",
            setup,
            multi=True,
        )
        .with_row(dash.Row("Fleet"))
        .with_panel(
            stat_panel(
                "Clusters configured",
                fleet_count,
                "Clusters configured in fleet-exporter.",
                steps=thresholds((None, "blue")),
            )
        )
        .with_panel(
            stat_panel(
                "Clusters failing",
                f"count(({probe_failed}) == 1) or vector(0)",
                "Configured clusters whose probe fails or is not scraped.",
            )
        )
        .with_panel(
            stat_panel(
                "Faulted volumes",
                f"sum({faulted}) or vector(0)",
                "Volumes without a healthy replica, fleet-wide.",
            )
        )
        .with_panel(
            stat_panel(
                "Degraded volumes",
                f"sum({degraded}) or vector(0)",
                "Volumes running with fewer healthy replicas than configured.",
                steps=thresholds((None, "green"), (1, "orange")),
            )
        )
        .with_panel(
            stat_panel(
                "Nodes not ready",
                f"sum({nodes_down}) or vector(0)",
                "Longhorn nodes whose Ready condition is false.",
            )
        )
        .with_panel(
            stat_panel(
                "Backups failing",
                f"sum({alerting('LonghornBackupFailed')}) or vector(0)",
                "Volumes whose newest backup failed and none completed since, fleet-wide "
                "(LonghornBackupFailed's condition).",
                steps=thresholds((None, "green"), (1, "orange")),
            )
        )
        .with_row(dash.Row("Clusters"))
        .with_panel(clusters_table)
        .with_row(dash.Row("Trends"))
        .with_panel(
            series_panel(
                "Probe success",
                "1 = the cluster's Longhorn state was collected.",
                [query(f"max by (cluster) (probe_success{{{probe}}})", "A", "{{cluster}}")],
                max_value=1,
                links=to_triage,
            )
        )
        .with_panel(
            series_panel(
                "Volumes not healthy",
                "Volumes that need something, per cluster: faulted, degraded, a replica that "
                "cannot be scheduled, or detached without enough usable replicas "
                "(longhorn_volume_healthy 0).",
                [
                    query(
                        f"count by (cluster) (longhorn_volume_healthy{{{c}}} == 0)",
                        "A",
                        "{{cluster}}",
                    )
                ],
                links=to_triage,
            )
        )
        .with_panel(
            series_panel(
                "Probe duration",
                "How long each cluster's probe took (the scrape timeout is 25 s).",
                [
                    query(
                        f"max by (cluster) (probe_duration_seconds{{{probe}}})",
                        "A",
                        "{{cluster}}",
                    )
                ],
                unit="s",
                links=to_triage,
            )
        )
        .with_panel(
            series_panel(
                "Storage used",
                "Used share of the schedulable storage of all Longhorn nodes, per cluster.",
                [
                    query(
                        f"sum by (cluster) (longhorn_node_storage_usage_bytes{{{c}}})"
                        f" / sum by (cluster) (longhorn_node_storage_capacity_bytes{{{c}}} > 0)",
                        "A",
                        "{{cluster}}",
                    )
                ],
                unit="percentunit",
                max_value=1,
                links=to_triage,
            )
        )
    )


# --- single-cluster triage --------------------------------------------------------------
# Each row of the triage dashboard is built by one function returning its panels.
Panels = list[Any]
VOL = "volume, pvc_namespace, pvc"
VOLUME_KEYS = {"volume": "Volume", "pvc_namespace": "Namespace", "pvc": "PVC"}


def triage(setup: Setup) -> dash.Dashboard:
    c = 'cluster="$cluster"'
    board_ = board(
        "Longhorn cluster triage",
        TRIAGE_UID,
        "One cluster's Longhorn state, as fleet-exporter sees it.",
        setup,
        multi=False,
    )
    rows = [
        ("Status", triage_status(setup, c)),
        ("Volumes", triage_volumes(c)),
        ("Backups", triage_backups(c)),
        ("Nodes and disks", triage_nodes(c)),
        ("Collection", triage_collection(setup, c)),
    ]
    for title, panels in rows:
        board_ = board_.with_row(dash.Row(title))
        for panel in panels:
            board_ = board_.with_panel(panel)
    return board_


def triage_status(setup: Setup, c: str) -> Panels:
    probe = f"{setup.probe}, {c}"

    def count(alert: str) -> str:
        return f"count(\n{block(setup.condition(alert, c))}\n)"

    def alerting(alert: str) -> str:
        return f"{count(alert)} or vector(0)"

    def labelled(rule: dict[str, Any]) -> str:
        name, severity = rule["alert"], rule["labels"]["severity"]
        inner = f'label_replace(\n{block(count(name))},\n  "alert", "{name}", "", ""\n)'
        return f'label_replace(\n{block(inner)},\n  "severity", "{severity}", "", ""\n)'

    # Every alert condition that holds now, one row per alert (as the overview's score).
    conditions = "\nor\n".join(labelled(r) for r in setup.conditions())
    orange = thresholds((None, "green"), (1, "orange"))
    return [
        stat_panel(
            "Probe",
            f"max(probe_success{{{probe}}})",
            "OK when the last probe collected fresh Longhorn data.",
            steps=GOOD_IS_ONE,
            ok_fail=True,
            width=3,
        ),
        stat_panel(
            "Longhorn API",
            f"max(longhorn_up{{{c}}})",
            "OK when the API server served Longhorn's resources.",
            steps=GOOD_IS_ONE,
            ok_fail=True,
            width=3,
        ),
        stat_panel(
            "Data age",
            f"max(longhorn_exporter_data_age_seconds{{{c}}})",
            "Age of the data the exporter served (cache TTL 25 s).",
            unit="s",
            steps=thresholds((None, "green"), (60, "orange"), (120, "red")),
            width=3,
        ),
        stat_panel(
            "Longhorn version",
            f"max by (version) (longhorn_version_info{{{c}}})",
            "From the current-longhorn-version setting.",
            text_name=True,
            steps=thresholds((None, "blue")),
            width=3,
        ),
        stat_panel(
            "Volume count",
            f"count(longhorn_volume_capacity_bytes{{{c}}})",
            "Longhorn volumes in the cluster.",
            steps=thresholds((None, "blue")),
            width=3,
        ),
        stat_panel(
            "Faulted",
            f'count(longhorn_volume_robustness{{{c}, state="faulted"}} == 1) or vector(0)',
            "Volumes without a healthy replica.",
            width=3,
        ),
        stat_panel(
            "Degraded",
            f'count(longhorn_volume_robustness{{{c}, state="degraded"}} == 1) or vector(0)',
            "Volumes with fewer healthy replicas than configured.",
            steps=orange,
            width=3,
        ),
        stat_panel(
            "Nodes not ready",
            f'count(longhorn_node_status{{{c}, condition="ready"}} == 0) or vector(0)',
            "Longhorn nodes whose Ready condition is false.",
            width=3,
        ),
        stat_panel(
            "Read-only filesystems",
            f"count(longhorn_volume_file_system_read_only{{{c}}} == 1) or vector(0)",
            "Volumes whose filesystem was remounted read-only: the workload's writes fail.",
            width=3,
        ),
        stat_panel(
            "Not healthy",
            f"count(longhorn_volume_healthy{{{c}}} == 0) or vector(0)",
            "Volumes that need something (longhorn_volume_healthy 0): faulted, degraded, a "
            "replica that cannot be scheduled, or detached without enough usable replicas.",
            steps=orange,
            width=3,
        ),
        stat_panel(
            "Scheduling failures",
            alerting("LonghornVolumeReplicaSchedulingFailed"),
            "Volumes with a replica Longhorn cannot place (Scheduled False, or a replica "
            "without a node), whatever their robustness says.",
            steps=orange,
            width=3,
        ),
        stat_panel(
            "Backups failing",
            alerting("LonghornBackupFailed"),
            "Volumes whose newest backup failed, with no backup completed since.",
            steps=orange,
            width=3,
        ),
        stat_panel(
            "Backups overdue",
            alerting("LonghornBackupOverdue"),
            "Volumes without a successful backup for longer than their backup job's "
            "interval + 2 h (24 h + 2 h without a job), never-backed-up ones included.",
            steps=orange,
            width=3,
        ),
        stat_panel(
            "Backups stuck",
            alerting("LonghornBackupStuck"),
            "Volumes with a backup in progress for more than 6 hours.",
            steps=orange,
            width=3,
        ),
        stat_panel(
            "Targets unavailable",
            alerting("LonghornBackupTargetUnavailable"),
            "Backup targets that synced before and are unavailable now.",
            width=3,
        ),
        stat_panel(
            "Disks under pressure",
            f'count(longhorn_disk_status{{{c}, condition="schedulable", '
            f'condition_reason="DiskPressure"}} == 0) or vector(0)',
            "Disks Longhorn places no new replica on for lack of space (DiskPressure).",
            steps=orange,
            width=3,
        ),
        table_panel(
            "Alert conditions now",
            "Every alert whose condition holds in this cluster now, and for how many "
            "objects: the alert rules' own expressions, without their `for:` wait. The "
            "runbook has a section per alert.",
            [("Objects", "none", conditions)],
            key_renames={"alert": "Alert", "severity": "Severity"},
            join_on=None,
            sort_by="Severity",
            sort_desc=False,
            height=7,
        ),
    ]


def triage_volumes(c: str) -> Panels:
    not_healthy = f"(max by (volume) (longhorn_volume_healthy{{{c}}}) == 0)"

    def of_unhealthy(metric: str) -> str:
        return f"max by ({VOL}) ({metric}{{{c}}}) and on (volume) {not_healthy}"

    unscheduled = f"max by ({VOL}) (longhorn_volume_replicas_unscheduled{{{c}}})"
    top_ratio = (
        f"topk(10, max by ({VOL}) (longhorn_volume_actual_size_bytes{{{c}}})"
        f" / max by ({VOL}) (longhorn_volume_capacity_bytes{{{c}}} > 0))"
    )
    unhealthy_table = table_panel(
        "Volumes not healthy",
        "Volumes with longhorn_volume_healthy 0, whatever the reason: their attach state, "
        "desired replicas, active replicas and failed ones. A detached volume reads "
        "robustness unknown, so this is where one missing replicas shows.",
        [
            ("Desired", "none", of_unhealthy("longhorn_volume_replicas_desired")),
            ("Replicas", "none", of_unhealthy("longhorn_volume_replicas")),
            ("Failed", "none", of_unhealthy("longhorn_volume_replicas_failed")),
            (
                "State",
                "none",
                f"max by ({VOL}, state) (longhorn_volume_state{{{c}}} == 1)"
                f" and on (volume) {not_healthy}",
            ),
        ],
        key_renames={**VOLUME_KEYS, "state": "Attach state"},
        join_on=None,
        sort_by="Volume",
        sort_desc=False,
        width=12,
    ).with_transformation(  # the state query's value (1) is no column; its label is
        dash_m.DataTransformerConfig(id_val="organize", options={"excludeByName": {"State": True}})
    )
    return [
        table_panel(
            "Volumes needing attention",
            "Volumes that are faulted or degraded now.",
            [
                (
                    "Robustness",
                    "none",
                    f"max by ({VOL}, state) ({ROBUSTNESS}{{{c}, {UNHEALTHY}}} == 1)",
                ),
            ],
            key_renames={**VOLUME_KEYS, "state": "State"},
            join_on=None,
            sort_by="State",
            sort_desc=False,
            width=12,
        ),
        table_panel(
            "Replicas below desired",
            "Volumes with fewer healthy replicas than numberOfReplicas.",
            [
                (
                    "Healthy",
                    "none",
                    f"max by ({VOL}) (longhorn_volume_replicas_healthy{{{c}}})"
                    f" < max by ({VOL}) (longhorn_volume_replicas_desired{{{c}}})",
                ),
                (
                    "Rebuilding",
                    "none",
                    f"max by ({VOL}) (longhorn_volume_replicas_rebuilding{{{c}}})"
                    f" and max by ({VOL}) (longhorn_volume_replicas_healthy{{{c}}})"
                    f" < max by ({VOL}) (longhorn_volume_replicas_desired{{{c}}})",
                ),
            ],
            key_renames=VOLUME_KEYS,
            join_on=None,
            sort_by="Healthy",
            sort_desc=False,
            width=12,
        ),
        unhealthy_table,
        table_panel(
            "Replicas that cannot be scheduled",
            "Volumes whose Scheduled condition is False (with its reason), or with an "
            "active replica that has no node. Robustness may still read healthy "
            "(longhorn/longhorn#11916).",
            [
                (
                    "Unscheduled replicas",
                    "none",
                    f"{unscheduled} * on (volume) group_left (condition_reason)"
                    " max by (volume, condition_reason)"
                    f' (longhorn_volume_condition{{{c}, condition="scheduled"}} == 0)'
                    f"\nor\n{unscheduled} > 0",
                ),
            ],
            key_renames={**VOLUME_KEYS, "condition_reason": "Reason"},
            join_on=None,
            sort_by="Unscheduled replicas",
            width=12,
        ),
        table_panel(
            "Read-only volumes",
            "Volumes whose filesystem was remounted read-only (the engine's "
            "FilesystemReadOnly condition): the workload's writes fail.",
            [
                (
                    "Read-only",
                    "none",
                    f"max by ({VOL}) (longhorn_volume_file_system_read_only{{{c}}}) == 1",
                ),
            ],
            key_renames=VOLUME_KEYS,
            join_on=None,
            sort_by="Volume",
            sort_desc=False,
            width=8,
            height=8,
        ),
        table_panel(
            "Actual size against capacity (top 10)",
            "What one replica occupies on its disk (written blocks and snapshots) against "
            "the volume's capacity; above 90 % LonghornVolumeActualSizeNearCapacity fires. "
            "Not the filesystem's fill level.",
            [
                ("Actual / capacity", "percentunit", top_ratio),
                (
                    "Actual size",
                    "bytes",
                    f"max by ({VOL}) (longhorn_volume_actual_size_bytes{{{c}}})"
                    f" and on (volume) {top_ratio}",
                ),
                (
                    "Capacity",
                    "bytes",
                    f"max by ({VOL}) (longhorn_volume_capacity_bytes{{{c}}})"
                    f" and on (volume) {top_ratio}",
                ),
            ],
            key_renames=VOLUME_KEYS,
            join_on=None,
            sort_by="Actual / capacity",
            width=16,
            height=8,
        ),
        series_panel(
            "Volumes by robustness",
            "Count of volumes in each robustness state.",
            [query(f"count by (state) (longhorn_volume_robustness{{{c}}} == 1)", "A", "{{state}}")],
        ),
        series_panel(
            "Rebuild progress",
            "Progress of replica rebuilds in flight.",
            [
                query(
                    f"max by (volume) (longhorn_volume_rebuild_progress_ratio{{{c}}} < 1)",
                    "A",
                    "{{volume}}",
                )
            ],
            unit="percentunit",
            max_value=1,
        ),
        series_panel(
            "Snapshots (top 10 volumes)",
            "Snapshots per volume; Longhorn refuses new ones at snapshot-max-count (250).",
            [
                query(
                    f"topk(10, max by (volume) (longhorn_volume_snapshots{{{c}}}))",
                    "A",
                    "{{volume}}",
                )
            ],
        ),
        series_panel(
            "Snapshot churn",
            "Snapshots created and removed per second, whole cluster.",
            [
                query(
                    f"sum(rate(longhorn_volume_snapshots_created_total{{{c}}}[$__rate_interval]))",
                    "A",
                    "created",
                ),
                query(
                    f"sum(rate(longhorn_volume_snapshots_removed_total{{{c}}}[$__rate_interval]))",
                    "B",
                    "removed",
                ),
            ],
            unit="ops",
        ),
    ]


def triage_backups(c: str) -> Panels:
    interval = f"max by (volume) (longhorn_volume_backup_interval_seconds{{{c}}})"
    last = "longhorn_volume_last_backup_timestamp_seconds"
    return [
        table_panel(
            "Backups by volume and target",
            "Age of the last successful backup, its latency, the age of the newest failed "
            "backup (failing while it is younger than the last success), and how many "
            "Backup objects are in state Error.",
            [
                (
                    "Last success age",
                    "s",
                    f"time() - max by ({VOL_TARGET}) ({LAST_BACKUP}{{{c}}} > 0)",
                ),
                (
                    "Last latency",
                    "s",
                    f"max by ({VOL_TARGET}) (longhorn_backup_last_latency_seconds{{{c}}})",
                ),
                (
                    "Last failure age",
                    "s",
                    f"time() - max by ({VOL_TARGET})"
                    f" (longhorn_backup_last_failure_timestamp_seconds{{{c}}})",
                ),
                (
                    "Failed objects",
                    "none",
                    f"sum by ({VOL_TARGET}) (longhorn_backups{{{c}, {ERRORED}}})",
                ),
            ],
            key_renames={"volume": "Volume", "backup_target": "Target"},
            join_on=None,
            sort_by="Last success age",
            width=12,
        ),
        table_panel(
            "Backup schedule by volume",
            "Volumes a backup recurring job applies to: the job's interval (the shortest "
            "among the jobs), the time since the last completed backup (since creation when "
            "there was none), and whether there never was one. LonghornBackupOverdue fires "
            "past interval + 2 h.",
            [
                (
                    "Job interval",
                    "s",
                    f"max by ({VOL}) (longhorn_volume_backup_interval_seconds{{{c}}})",
                ),
                (
                    "Without backup for",
                    "s",
                    f"time() - (max by ({VOL}) ({last}{{{c}}} > 0)"
                    f" or max by ({VOL}) (longhorn_volume_created_timestamp_seconds{{{c}}}))"
                    f" and on (volume) {interval}",
                ),
                (
                    "Never backed up",
                    "none",
                    f"(max by ({VOL}) ({last}{{{c}}}) == bool 0) and on (volume) {interval}",
                ),
            ],
            key_renames=VOLUME_KEYS,
            join_on=None,
            sort_by="Without backup for",
            width=12,
        ),
        series_panel(
            "Backups by state",
            "Backup objects per state.",
            [query(f"sum by (state) (longhorn_backups{{{c}}})", "A", "{{state}}")],
        ),
        series_panel(
            "Backup target availability",
            "1 = available.",
            [
                query(
                    f"max by (backup_target) (longhorn_backup_target_available{{{c}}})",
                    "A",
                    "{{backup_target}}",
                )
            ],
            max_value=1,
        ),
        series_panel(
            "Oldest backup in progress",
            "How long the oldest unfinished backup of each volume has been running.",
            [
                query(
                    "time() - min by (volume)"
                    f" (longhorn_backup_in_progress_oldest_start_timestamp_seconds{{{c}}} > 0)",
                    "A",
                    "{{volume}}",
                )
            ],
            unit="s",
        ),
    ]


def triage_nodes(c: str) -> Panels:
    replicas = "longhorn_node_replicas"
    capacity = f"max by (node) (longhorn_node_storage_capacity_bytes{{{c}}})"
    return [
        table_panel(
            "Nodes not ready, with reason",
            "Longhorn nodes whose Ready condition is false, with the reason.",
            [
                (
                    "Ready",
                    "none",
                    "max by (node, condition_reason)"
                    f' (longhorn_node_status{{{c}, condition="ready"}} == 0)',
                ),
            ],
            key_renames={"node": "Node", "condition_reason": "Reason"},
            join_on=None,
            sort_by="Node",
            sort_desc=False,
            width=8,
            height=8,
        ),
        table_panel(
            "Replicas per node, by state",
            "Active replicas placed on each node, by state. After a node fails its replicas "
            "turn failed here until Longhorn rebuilds them elsewhere and removes them.",
            [
                (
                    "Ready",
                    "none",
                    f'max by (node) (longhorn_node_status{{{c}, condition="ready"}})',
                ),
                *(
                    (
                        state.capitalize(),
                        "none",
                        f'max by (node) ({replicas}{{{c}, state="{state}"}})',
                    )
                    for state in ("healthy", "rebuilding", "failed", "stopped")
                ),
            ],
            key_renames={"node": "Node"},
            join_on=None,
            sort_by="Failed",
            width=16,
            height=8,
        ),
        series_panel(
            "Replicas per node over time",
            "All replicas placed on each node. What did a node hold before it went down? "
            "Hover the time before (by state: longhorn_node_replicas{node=...}); the volumes "
            "that turned degraded then had a replica there.",
            [query(f"sum by (node) ({replicas}{{{c}}})", "A", "{{node}}")],
        ),
        table_panel(
            "Node storage",
            "Per node, over its Longhorn disks: capacity, used share, space promised to "
            "replicas against the usable space (capacity minus reserved; above 100 % only "
            "with over-provisioning), and the reserved space.",
            [
                ("Capacity", "bytes", capacity),
                (
                    "Used",
                    "percentunit",
                    f"max by (node) (longhorn_node_storage_usage_bytes{{{c}}}) / ({capacity} > 0)",
                ),
                (
                    "Scheduled / usable",
                    "percentunit",
                    f"max by (node) (longhorn_node_storage_scheduled_bytes{{{c}}})"
                    f" / ({capacity} - max by (node)"
                    f" (longhorn_node_storage_reservation_bytes{{{c}}}) > 0)",
                ),
                (
                    "Reserved",
                    "bytes",
                    f"max by (node) (longhorn_node_storage_reservation_bytes{{{c}}})",
                ),
            ],
            key_renames={"node": "Node"},
            join_on=None,
            sort_by="Used",
            width=12,
            height=8,
        ),
        table_panel(
            "Disks Longhorn stopped using",
            "Disks Longhorn marks unschedulable for lack of space (DiskPressure): no new "
            "replica goes there.",
            [
                (
                    "Schedulable",
                    "none",
                    "max by (node, disk) (longhorn_disk_status{"
                    f'{c}, condition="schedulable", condition_reason="DiskPressure"}} == 0)',
                ),
            ],
            key_renames={"node": "Node", "disk": "Disk"},
            join_on=None,
            sort_by="Node",
            sort_desc=False,
            width=8,
            height=8,
        ),
        series_panel(
            "Disk usage",
            "Used share of each Longhorn disk.",
            [
                query(
                    f"max by (node, disk) (longhorn_disk_usage_bytes{{{c}}})"
                    f" / max by (node, disk) (longhorn_disk_capacity_bytes{{{c}}} > 0)",
                    "A",
                    "{{node}} {{disk}}",
                )
            ],
            unit="percentunit",
            max_value=1,
            width=16,
        ),
    ]


def triage_collection(setup: Setup, c: str) -> Panels:
    return [
        series_panel(
            "Lists failing",
            "Resources whose last list did not complete (RBAC, errors, timeouts).",
            [
                query(
                    f"max by (resource) (longhorn_exporter_list_success{{{c}}} == 0)",
                    "A",
                    "{{resource}}",
                )
            ],
            width=8,
        ),
        series_panel(
            "List duration",
            "Time to list every page of each resource in the last refresh.",
            [
                query(
                    f"max by (resource) (longhorn_exporter_list_duration_seconds{{{c}}})",
                    "A",
                    "{{resource}}",
                )
            ],
            unit="s",
            width=8,
        ),
        series_panel(
            "Probe duration",
            "How long the probe took (the scrape timeout is 25 s).",
            [query(f"max(probe_duration_seconds{{{setup.probe}, {c}}})", "A", "probe")],
            unit="s",
            width=8,
        ),
    ]


# --- output -----------------------------------------------------------------------------
def render(board: dash.Dashboard) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(board.build()) + "\n"


def outputs(config: mc.Config, out_dir: Path = HERE) -> dict[Path, str]:
    setup = Setup.of(config)
    return {
        out_dir / f"{OVERVIEW_UID}.json": render(overview(setup)),
        out_dir / f"{TRIAGE_UID}.json": render(triage(setup)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=mc.CONFIG, help="configuration file")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    try:
        files = outputs(mc.load(args.config), args.out_dir)
    except (mc.ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return mc.write_or_check(files, args.check, Path(__file__).name)


if __name__ == "__main__":
    sys.exit(main())
