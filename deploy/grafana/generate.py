#!/usr/bin/env python3
"""Generate the two Grafana dashboards of fleet-exporter from code.

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python3 deploy/grafana/generate.py [--check]

- longhorn-fleet-overview.json: the fleet at a glance. One table row per cluster, worst
  first, each cluster name linking to the triage dashboard with that cluster selected.
- longhorn-cluster-triage.json: one cluster (variable `cluster`), for the person on call.

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
  (blackbox): they are selected with the probe job's name, job="longhorn-fleet".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

HERE = Path(__file__).resolve().parent
OVERVIEW_UID = "longhorn-fleet-overview"
TRIAGE_UID = "longhorn-cluster-triage"
OVERVIEW_FILE = HERE / f"{OVERVIEW_UID}.json"
TRIAGE_FILE = HERE / f"{TRIAGE_UID}.json"

PROBE_JOB = 'job="longhorn-fleet"'
# Fragments shared by several queries (the long names would not fit a line).
ROBUSTNESS = "longhorn_volume_robustness"
LAST_BACKUP = "longhorn_backup_last_success_timestamp_seconds"
UNHEALTHY = 'state=~"faulted|degraded"'
ERRORED = 'state=~"(?i)error"'
VOL_TARGET = "volume, backup_target"
INVENTORY = "fleet_exporter_cluster_configured"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["longhorn", "fleet-exporter"]
TRIAGE_LINK = (
    f"/d/{TRIAGE_UID}/{TRIAGE_UID}?${{datasource:queryparam}}"
    "&var-cluster=${__data.fields.Cluster}&${__url_time_range}"
)


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


def cluster_variable(multi: bool) -> dash.QueryVariable:
    v = (
        dash.QueryVariable("cluster")
        .label("Cluster")
        .datasource(DATASOURCE)
        .query(f"label_values({INVENTORY}, cluster)")
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


def board(title: str, uid: str, description: str, *, multi: bool) -> dash.Dashboard:
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
        .with_variable(cluster_variable(multi=multi))
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


# --- the fleet overview -----------------------------------------------------------------
def overview() -> dash.Dashboard:
    c = 'cluster=~"$cluster"'
    inventory = f"max by (cluster) ({INVENTORY}{{{c}}})"
    zero = f"0 * {inventory}"

    def or_zero(expr: str) -> str:
        """Every configured cluster gets a row: 0 where `expr` has no value."""
        return f"({expr}) or on (cluster) ({zero})"

    probe_failed = (
        f"(max by (cluster) (probe_success{{{PROBE_JOB}, {c}}}) == bool 0)"
        f" or on (cluster) (1 + {zero})"
    )
    faulted = f'count by (cluster) (longhorn_volume_robustness{{{c}, state="faulted"}} == 1)'
    degraded = f'count by (cluster) (longhorn_volume_robustness{{{c}, state="degraded"}} == 1)'
    nodes_down = f'count by (cluster) (longhorn_node_status{{{c}, condition="ready"}} == 0)'
    backups_failed = f'sum by (cluster) (longhorn_backups{{{c}, state=~"(?i)error"}})'
    score = (
        f"1000 * ({probe_failed})"
        f"\n+ on (cluster) 100 * ({or_zero(faulted)})"
        f"\n+ on (cluster) 10 * ({or_zero(degraded)})"
        f"\n+ on (cluster) 10 * ({or_zero(nodes_down)})"
        f"\n+ on (cluster) ({or_zero(backups_failed)})"
    )
    clusters_table = table_panel(
        "Clusters, worst first",
        "One row per configured cluster. Score = 1000 per failing probe + 100 per faulted "
        "volume + 10 per degraded volume or node not ready + 1 per failed backup. Click a "
        "cluster to open its triage dashboard.",
        [
            ("Score", "none", score),
            ("Probe", "none", f"max by (cluster) (probe_success{{{PROBE_JOB}, {c}}})"),
            ("Longhorn API", "none", f"max by (cluster) (longhorn_up{{{c}}})"),
            ("Data age", "s", f"max by (cluster) (longhorn_exporter_data_age_seconds{{{c}}})"),
            ("Volumes", "none", f"count by (cluster) (longhorn_volume_capacity_bytes{{{c}}})"),
            ("Faulted", "none", or_zero(faulted)),
            ("Degraded", "none", or_zero(degraded)),
            ("Nodes not ready", "none", or_zero(nodes_down)),
            ("Failed backups", "none", or_zero(backups_failed)),
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

    fleet_count = f"count({inventory})"
    return (
        board(
            "Longhorn fleet overview",
            OVERVIEW_UID,
            "Longhorn health of every cluster that fleet-exporter probes.",
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
                "Failed backups",
                f"sum({backups_failed}) or vector(0)",
                "Backup objects in state Error, fleet-wide.",
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
                [
                    query(
                        f"max by (cluster) (probe_success{{{PROBE_JOB}, {c}}})", "A", "{{cluster}}"
                    )
                ],
                max_value=1,
            )
        )
        .with_panel(
            series_panel(
                "Unhealthy volumes",
                "Faulted or degraded volumes per cluster.",
                [
                    query(
                        f"count by (cluster) ({ROBUSTNESS}{{{c}, {UNHEALTHY}}} == 1)",
                        "A",
                        "{{cluster}}",
                    )
                ],
            )
        )
        .with_panel(
            series_panel(
                "Probe duration",
                "How long each cluster's probe took (the scrape timeout is 25 s).",
                [
                    query(
                        f"max by (cluster) (probe_duration_seconds{{{PROBE_JOB}, {c}}})",
                        "A",
                        "{{cluster}}",
                    )
                ],
                unit="s",
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
            )
        )
    )


# --- single-cluster triage --------------------------------------------------------------
def triage() -> dash.Dashboard:
    c = 'cluster="$cluster"'
    vol = "volume, pvc_namespace, pvc"
    return (
        board(
            "Longhorn cluster triage",
            TRIAGE_UID,
            "One cluster's Longhorn state, as fleet-exporter sees it.",
            multi=False,
        )
        .with_row(dash.Row("Status"))
        .with_panel(
            stat_panel(
                "Probe",
                f"max(probe_success{{{PROBE_JOB}, {c}}})",
                "OK when the last probe collected fresh Longhorn data.",
                steps=GOOD_IS_ONE,
                ok_fail=True,
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Longhorn API",
                f"max(longhorn_up{{{c}}})",
                "OK when the API server served Longhorn's resources.",
                steps=GOOD_IS_ONE,
                ok_fail=True,
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Data age",
                f"max(longhorn_exporter_data_age_seconds{{{c}}})",
                "Age of the data the exporter served (cache TTL 25 s).",
                unit="s",
                steps=thresholds((None, "green"), (60, "orange"), (120, "red")),
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Longhorn version",
                f"max by (version) (longhorn_version_info{{{c}}})",
                "From the current-longhorn-version setting.",
                text_name=True,
                steps=thresholds((None, "blue")),
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Volume count",
                f"count(longhorn_volume_capacity_bytes{{{c}}})",
                "Longhorn volumes in the cluster.",
                steps=thresholds((None, "blue")),
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Faulted",
                f'count(longhorn_volume_robustness{{{c}, state="faulted"}} == 1) or vector(0)',
                "Volumes without a healthy replica.",
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Degraded",
                f'count(longhorn_volume_robustness{{{c}, state="degraded"}} == 1) or vector(0)',
                "Volumes with fewer healthy replicas than configured.",
                steps=thresholds((None, "green"), (1, "orange")),
                width=3,
            )
        )
        .with_panel(
            stat_panel(
                "Nodes not ready",
                f'count(longhorn_node_status{{{c}, condition="ready"}} == 0) or vector(0)',
                "Longhorn nodes whose Ready condition is false.",
                width=3,
            )
        )
        .with_row(dash.Row("Volumes"))
        .with_panel(
            table_panel(
                "Volumes needing attention",
                "Volumes that are faulted or degraded now.",
                [
                    (
                        "Robustness",
                        "none",
                        f"max by ({vol}, state) ({ROBUSTNESS}{{{c}, {UNHEALTHY}}} == 1)",
                    ),
                ],
                key_renames={
                    "volume": "Volume",
                    "pvc_namespace": "Namespace",
                    "pvc": "PVC",
                    "state": "State",
                },
                join_on=None,
                sort_by="State",
                sort_desc=False,
                width=12,
            )
        )
        .with_panel(
            table_panel(
                "Replicas below desired",
                "Volumes with fewer healthy replicas than numberOfReplicas.",
                [
                    (
                        "Healthy",
                        "none",
                        f"max by ({vol}) (longhorn_volume_replicas_healthy{{{c}}})"
                        f" < max by ({vol}) (longhorn_volume_replicas_desired{{{c}}})",
                    ),
                    (
                        "Rebuilding",
                        "none",
                        f"max by ({vol}) (longhorn_volume_replicas_rebuilding{{{c}}})"
                        f" and max by ({vol}) (longhorn_volume_replicas_healthy{{{c}}})"
                        f" < max by ({vol}) (longhorn_volume_replicas_desired{{{c}}})",
                    ),
                ],
                key_renames={"volume": "Volume", "pvc_namespace": "Namespace", "pvc": "PVC"},
                join_on=None,
                sort_by="Healthy",
                sort_desc=False,
                width=12,
            )
        )
        .with_panel(
            series_panel(
                "Volumes by robustness",
                "Count of volumes in each robustness state.",
                [
                    query(
                        f"count by (state) (longhorn_volume_robustness{{{c}}} == 1)",
                        "A",
                        "{{state}}",
                    )
                ],
            )
        )
        .with_panel(
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
            )
        )
        .with_panel(
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
            )
        )
        .with_panel(
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
            )
        )
        .with_row(dash.Row("Backups"))
        .with_panel(
            table_panel(
                "Backups by volume and target",
                "Age of the last successful backup, its latency, and failed backups.",
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
                        "Failed",
                        "none",
                        f"sum by ({VOL_TARGET}) (longhorn_backups{{{c}, {ERRORED}}})",
                    ),
                ],
                key_renames={"volume": "Volume", "backup_target": "Target"},
                join_on=None,
                sort_by="Last success age",
                width=12,
            )
        )
        .with_panel(
            series_panel(
                "Backups by state",
                "Backup objects per state.",
                [query(f"sum by (state) (longhorn_backups{{{c}}})", "A", "{{state}}")],
            )
        )
        .with_panel(
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
            )
        )
        .with_panel(
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
            )
        )
        .with_row(dash.Row("Nodes and disks"))
        .with_panel(
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
            )
        )
        .with_panel(
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
            )
        )
        .with_row(dash.Row("Collection"))
        .with_panel(
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
            )
        )
        .with_panel(
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
            )
        )
        .with_panel(
            series_panel(
                "Probe duration",
                "How long the probe took (the scrape timeout is 25 s).",
                [query(f"max(probe_duration_seconds{{{PROBE_JOB}, {c}}})", "A", "probe")],
                unit="s",
                width=8,
            )
        )
    )


# --- output -----------------------------------------------------------------------------
def render(board: dash.Dashboard) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(board.build()) + "\n"


def outputs() -> dict[Path, str]:
    return {OVERVIEW_FILE: render(overview()), TRIAGE_FILE: render(triage())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
