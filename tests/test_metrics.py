"""The encoder (byte-identical to prometheus_client) and the Longhorn families, fed from
the real examples and from objects built to the CRD shapes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet_exporter.exposition import Encoded, Family, Writer, encode
from fleet_exporter.longhorn.churn import SnapshotChurn
from fleet_exporter.longhorn.health import summarize
from fleet_exporter.longhorn.records import ClusterState
from fleet_exporter.longhorn.triage import triage
from fleet_exporter.longhorn.wire import parse_time
from simulator.fleet import ClusterSpec
from tests.steps import add_page, drain, encoded, families, finish
from tests.test_longhorn import (
    ALL,
    BACKUP_COUNTS,
    BACKUPS,
    EXAMPLE_VOLUME,
    HOSTILE,
    backup,
    cond,
    engine,
    example,
    reduce_objects,
    reduce_simulated,
    replica,
    snapshot,
    volume,
)

HOSTILE_VALUES = ['a"b', "back\\slash", "new\nline", "ünïcødé 卷 🚀", "", "%s %d {0}", "\\n"]


class _Reference:
    """prometheus_client's view of the same families, ``cluster`` as the first label."""

    def __init__(self, families: list[Family], cluster: str) -> None:
        self.families, self.cluster = families, cluster

    def collect(self) -> Any:
        for f in self.families:
            cls = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
            m = cls(f.name, f.help, labels=["cluster", *f.labelnames])
            for values, value in f.samples:
                m.add_metric([self.cluster, *values], value)
            yield m


def assert_same_as_prometheus_client(families: list[Family], cluster: str) -> None:
    ref = _Reference(families, cluster)
    assert encode(families, cluster) == generate_latest(ref)  # type: ignore[arg-type]
    assert encode(families, cluster, openmetrics=True) == om_generate_latest(ref)


VARIED = [
    Family(
        "longhorn_volume_snapshots_created_total",
        "counter",
        'Help with \\ backslash, "quotes"\nand a newline.',
        ("volume", "pvc", "pvc_namespace", "node"),
        [((v, "claim", "ns", "n1"), float(i)) for i, v in enumerate(HOSTILE_VALUES)],
    ),
    Family("longhorn_node_count_total", "gauge", "Nodes.", (), [((), 3.0)]),
    Family(
        "longhorn_backups",
        "gauge",
        "Backups by state.",
        ("volume", "backup_target", "state"),
        [(("v", "default", s), n) for s, n in (("Completed", 10.0), ("Error", 0.0))],
    ),
    Family(
        "longhorn_disk_capacity_bytes",
        "gauge",
        "Floats of every shape.",
        ("node", "disk"),
        [
            (("n", str(i)), value)
            for i, value in enumerate(
                [
                    0.0,
                    1.0,
                    -1.0,
                    0.5,
                    1e-7,
                    123456.0,
                    1234567.0,
                    21474836480.0,
                    491106525184.0,
                    1.5e300,
                    math.inf,
                    -math.inf,
                    math.nan,
                    1782997814.0,
                    -2.5e10,
                ]
            )
        ],
    ),
    Family("zzz_empty", "gauge", "A family without samples.", ("a",), []),
    Family(
        "aaa_counter_without_suffix", "counter", "Suffix appended.", ("z", "a"), [(("1", "2"), 1.0)]
    ),
]


def test_encoder_is_byte_identical_to_prometheus_client() -> None:
    assert_same_as_prometheus_client(VARIED, "eu-west-prod-01")
    assert_same_as_prometheus_client(VARIED, HOSTILE)


@settings(max_examples=150, deadline=None)
@given(
    cluster=st.text(max_size=12),
    values=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=6),
    number=st.floats(allow_nan=False) | st.integers(-(2**60), 2**60).map(float),
)
def test_encoder_matches_for_any_label_value(
    cluster: str, values: list[tuple[str, str]], number: float
) -> None:
    fam = Family("x_bytes", "gauge", "h", ("volume", "node"), [(v, number) for v in values])
    assert_same_as_prometheus_client([fam], cluster)


def test_encoder_shapes() -> None:
    fam = Family("c_total", "counter", "h", (), [((), 2.0)])
    text = encode([fam], "c").decode()
    assert text == '# HELP c_total h\n# TYPE c_total counter\nc_total{cluster="c"} 2.0\n'
    om = encode([fam], "c", openmetrics=True).decode()
    assert om == '# HELP c h\n# TYPE c counter\nc_total{cluster="c"} 2.0\n# EOF\n'
    assert encode([fam], "c", openmetrics=True, eof=False).decode() == om.removesuffix("# EOF\n")
    assert encode([], "c", openmetrics=True) == b"# EOF\n"
    assert encode([], "c") == b""
    with pytest.raises(ValueError, match="x: 1 label values for 2 label names"):
        encode([Family("x", "gauge", "h", ("a", "b"), [(("1",), 1.0)])], "c")
    with pytest.raises(ValueError, match="unsupported type 'histogram'"):
        encode([Family("x", "histogram", "h", (), [])], "c")


# --------------------------------------------------------------------------- pipeline

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def render(state: ClusterState, churn: SnapshotChurn | None = None, cluster: str = "c1") -> Samples:
    """Reduce -> families -> text -> parsed back by prometheus_client's parser."""
    if churn is None:
        churn = SnapshotChurn()
        churn.update(state)
    text = encode(families(state, churn), cluster).decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.labels.pop("cluster") == cluster
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def series(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_example_volume_end_to_end() -> None:
    state = reduce_objects(
        {"volumes": [example("volume.yaml")], "replicas": [example("replica.yaml")]}
    )
    s = render(state)
    base = {
        "volume": EXAMPLE_VOLUME,
        "pvc": "longhorn-rwx-pvc-run-002",
        "pvc_namespace": "storage-benchmark-rwx",
        "node": "dauwalter",
    }
    assert series(s, "longhorn_volume_capacity_bytes", **base) == 21474836480
    assert series(s, "longhorn_volume_actual_size_bytes", **base) == 20466663424
    assert series(s, "longhorn_volume_replicas_desired", **base) == 3
    assert series(s, "longhorn_volume_replicas", **base) == 1
    assert series(s, "longhorn_volume_replicas_healthy", **base) == 0  # no engine listed
    assert series(s, "longhorn_volume_healthy", **base) == 1
    assert series(s, "longhorn_volume_last_backup_at", **base) == 0
    assert series(s, "longhorn_volume_last_backup_timestamp_seconds", **base) == 0
    assert series(s, "longhorn_volume_file_system_read_only", **base) == 0
    robustness = {
        r: series(s, "longhorn_volume_robustness", **base, state=r)
        for r in ("unknown", "healthy", "degraded", "faulted")
    }
    assert robustness == {"unknown": 0, "healthy": 1, "degraded": 0, "faulted": 0}
    states = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "longhorn_volume_state"}
    assert states == {
        "creating": 0,
        "attached": 1,
        "detached": 0,
        "attaching": 0,
        "detaching": 0,
        "deleting": 0,
    }
    conditions = {
        (dict(k[1])["condition"], dict(k[1])["condition_reason"]): v
        for k, v in s.items()
        if k[0] == "longhorn_volume_condition"
    }
    assert conditions == {
        ("waitforbackingimage", ""): 0,
        ("toomanysnapshots", ""): 0,
        ("scheduled", ""): 1,
        ("restore", ""): 0,
    }
    info = [dict(k[1]) for k in s if k[0] == "longhorn_volume_info"]
    assert info == [
        {
            **base,
            "frontend": "blockdev",
            "data_engine": "v1",
            "access_mode": "rwx",
            "number_of_replicas": "3",
            "data_locality": "disabled",
            "attached_node": "dauwalter",
            "backup_target": "default",
        }
    ]
    assert series(s, "longhorn_volume_snapshots", **base) == 0
    assert series(s, "longhorn_volume_snapshots_created_total", **base) == 0
    assert "longhorn_volume_snapshot_oldest_timestamp_seconds" not in names(s)
    assert "longhorn_volume_rebuild_progress_ratio" not in names(s)


def test_example_engine_end_to_end() -> None:
    eng = example("engine.yaml")
    live = sorted(eng["spec"]["replicaAddressMap"])
    state = reduce_objects(
        {
            "volumes": [volume("vol1", node="shuo-k8s-worker-1")],
            "replicas": [replica(n, "vol1", node=f"w{i}") for i, n in enumerate(live)],
            "engines": [eng],
        }
    )
    s = render(state)
    base = {"volume": "vol1", "pvc": "claim-vol1", "pvc_namespace": "apps"}
    base["node"] = "shuo-k8s-worker-1"
    counts = {
        m: series(s, f"longhorn_volume_replicas{m}", **base)
        for m in ("", "_desired", "_healthy", "_rebuilding", "_failed", "_unscheduled")
    }
    assert counts == {
        "": 3,
        "_desired": 3,
        "_healthy": 3,
        "_rebuilding": 0,
        "_failed": 0,
        "_unscheduled": 0,
    }


def test_example_node_end_to_end() -> None:
    s = render(reduce_objects({"nodes": [example("node.yaml")]}))
    node = "kubernetes-node-1"
    assert series(s, "longhorn_node_count_total") == 1
    status = {
        (dict(k[1])["condition"], dict(k[1])["condition_reason"]): v
        for k, v in s.items()
        if k[0] == "longhorn_node_status"
    }
    assert status == {
        ("ready", ""): 1,
        ("schedulable", ""): 1,
        ("mountpropagation", ""): 1,
        ("requiredpackages", ""): 1,
        ("multipathd", ""): 1,
        ("kernelmodulesloaded", ""): 1,
        ("nfsclientinstalled", ""): 1,
        ("allowScheduling", ""): 1,
    }
    assert series(s, "longhorn_node_storage_capacity_bytes", node=node) == 491106525184
    assert series(s, "longhorn_node_storage_usage_bytes", node=node) == 58384384
    assert series(s, "longhorn_node_storage_reservation_bytes", node=node) == 0
    assert series(s, "longhorn_node_storage_scheduled_bytes", node=node) == 0
    disk = {"node": node, "disk": "nvme-1"}
    assert series(s, "longhorn_disk_capacity_bytes", **disk) == 491106525184
    assert series(s, "longhorn_disk_usage_bytes", **disk) == 58384384
    assert series(s, "longhorn_disk_reservation_bytes", **disk) == 0
    assert series(s, "longhorn_disk_status", **disk, condition="ready", condition_reason="") == 1
    assert (
        series(s, "longhorn_disk_status", **disk, condition="schedulable", condition_reason="") == 1
    )


def test_example_backup_target_end_to_end() -> None:
    s = render(reduce_objects({"backuptargets": [example("backuptarget-v1beta1.yaml")]}))
    assert series(s, "longhorn_backup_target_available", backup_target="default") == 0
    assert (
        series(s, "longhorn_backup_target_last_synced_timestamp_seconds", backup_target="default")
        == 0
    )


def test_backup_metrics() -> None:
    s = render(reduce_objects({"volumes": [volume("v")], "backups": BACKUPS}))
    pair = {"volume": "v", "backup_target": "default"}
    assert series(s, "longhorn_backup_last_success_timestamp_seconds", **pair) == parse_time(
        "2026-07-09T02:00:00Z"
    )
    assert series(s, "longhorn_backup_last_latency_seconds", **pair) == 330
    assert series(s, "longhorn_backup_last_size_bytes", **pair) == 4194304
    assert ("longhorn_backup_last_uploaded_bytes", frozenset(pair.items())) not in s  # "" -> absent
    assert series(
        s, "longhorn_backup_in_progress_oldest_start_timestamp_seconds", **pair
    ) == parse_time("2026-07-09T20:00:00Z")
    by_state = {
        dict(k[1])["state"]: v
        for k, v in s.items()
        if k[0] == "longhorn_backups" and dict(k[1])["backup_target"] == "default"
    }
    assert by_state == BACKUP_COUNTS
    dr = {"volume": "v", "backup_target": "s3-dr"}
    assert series(s, "longhorn_backup_last_latency_seconds", **dr) == 60
    assert (
        "longhorn_backup_in_progress_oldest_start_timestamp_seconds",
        frozenset(dr.items()),
    ) not in s
    assert not any(dict(k[1]).get("volume") == "deleted-volume" for k in s)
    base = {"volume": "v", "pvc": "claim-v", "pvc_namespace": "apps", "node": "n1"}
    assert series(s, "longhorn_volume_last_backup_timestamp_seconds", **base) == parse_time(
        "2026-07-09T02:00:00Z"
    )


def test_snapshot_and_rebuild_metrics() -> None:
    t1, t2 = "2026-07-01T00:00:00Z", "2026-07-05T00:00:00Z"
    objects = {
        "volumes": [volume("v", robustness="degraded")],
        "replicas": [replica("a", "v"), replica("b", "v", node="n2")],
        "engines": [
            engine(
                "e",
                "v",
                {"a": "RW", "b": "WO"},
                {"a": "10.0.0.1:1", "b": "10.0.0.2:1"},
                rebuild={"tcp://10.0.0.2:1": {"isRebuilding": True, "progress": 37}},
            )
        ],
        "snapshots": [snapshot("s1", "v", t1, 10), snapshot("s2", "v", t2, 32)],
    }
    churn = SnapshotChurn()
    state = reduce_objects(objects)
    churn.update(state)
    objects["snapshots"] = [snapshot("s2", "v", t2, 32), snapshot("s3", "v", t2, 1)]
    state = reduce_objects(objects)
    churn.update(state)
    s = render(state, churn)
    base = {"volume": "v", "pvc": "claim-v", "pvc_namespace": "apps", "node": "n1"}
    assert series(s, "longhorn_volume_snapshots", **base) == 2
    assert series(s, "longhorn_volume_snapshots_size_bytes", **base) == 33
    assert series(s, "longhorn_volume_snapshot_oldest_timestamp_seconds", **base) == parse_time(t2)
    assert series(s, "longhorn_volume_snapshot_newest_timestamp_seconds", **base) == parse_time(t2)
    assert series(s, "longhorn_volume_snapshots_created_total", **base) == 1
    assert series(s, "longhorn_volume_snapshots_removed_total", **base) == 1
    assert series(s, "longhorn_volume_rebuild_progress_ratio", **base) == 0.37
    assert series(s, "longhorn_volume_replicas_rebuilding", **base) == 1
    assert series(s, "longhorn_volume_healthy", **base) == 0


def test_incomplete_resources_omit_their_metrics() -> None:
    objects = {
        "volumes": [volume("v", state="detached", robustness="unknown")],
        "replicas": [replica("a", "v")],
        "engines": [engine("e", "v", {"a": "RW"}, {})],
        "snapshots": [snapshot("s", "v", "2026-07-01T00:00:00Z", 1)],
        "backups": [
            backup("b", "v", "Completed", "2026-07-01T00:00:00Z", done="2026-07-01T00:01:00Z")
        ],
        "recurringjobs": [
            {
                "metadata": {"name": "j"},
                "spec": {"task": "snapshot"},
                "status": {"executionCount": 2},
            }
        ],
        "settings": [{"metadata": {"name": "current-longhorn-version"}, "value": "v1.9.0"}],
    }
    full = names(render(reduce_objects(objects)))
    only_core = names(render(reduce_objects(objects, frozenset({"volumes", "nodes"}))))
    assert full - only_core == {
        "longhorn_volume_replicas",
        "longhorn_volume_replicas_unscheduled",
        "longhorn_volume_replicas_healthy",
        "longhorn_volume_replicas_rebuilding",
        "longhorn_volume_replicas_failed",
        "longhorn_volume_file_system_read_only",
        "longhorn_volume_healthy",  # detached: needs the replicas
        "longhorn_volume_snapshots",
        "longhorn_volume_snapshots_size_bytes",
        "longhorn_volume_snapshot_oldest_timestamp_seconds",
        "longhorn_volume_snapshot_newest_timestamp_seconds",
        "longhorn_volume_snapshots_created_total",
        "longhorn_volume_snapshots_removed_total",
        "longhorn_volume_last_backup_timestamp_seconds",
        "longhorn_backup_last_success_timestamp_seconds",
        "longhorn_backup_last_latency_seconds",
        "longhorn_backups",
        "longhorn_recurring_job_info",
        "longhorn_recurring_job_executions_total",
        "longhorn_version_info",
    }
    assert only_core >= {"longhorn_volume_info", "longhorn_volume_replicas_desired"}
    assert "longhorn_node_count_total" in only_core  # 0 nodes listed, completely
    no_nodes = names(render(reduce_objects(objects, ALL - {"nodes"})))
    assert "longhorn_node_count_total" not in no_nodes


def test_unknown_enum_values_use_fixed_label_sets() -> None:
    state = reduce_objects(
        {
            "volumes": [volume("v", state="hibernating", robustness="splendid")],
            "backups": [backup("b", "v", "Exploded", "2026-07-01T00:00:00Z")],
        }
    )
    s = render(state)
    base = {"volume": "v", "pvc": "claim-v", "pvc_namespace": "apps", "node": "n1"}
    vstate = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "longhorn_volume_state"}
    assert sorted(vstate) == sorted(
        ["creating", "attached", "detached", "attaching", "detaching", "deleting"]
    )
    assert set(vstate.values()) == {0}  # as Longhorn's exporter: no state is 1
    assert series(s, "longhorn_volume_robustness", **base, state="unknown") == 1
    bstates = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "longhorn_backups"}
    assert bstates["Unknown"] == 1 and "Exploded" not in bstates


def test_hostile_names_round_trip() -> None:
    node = example("node.yaml")
    node["metadata"]["name"] = HOSTILE
    node["spec"]["disks"] = {HOSTILE: node["spec"]["disks"]["nvme-1"]}
    node["status"]["diskStatus"] = {HOSTILE: node["status"]["diskStatus"]["nvme-1"]}
    node["status"]["conditions"][0] = cond("Ready", "False", HOSTILE)
    v = volume(HOSTILE, node=HOSTILE)
    v["status"]["kubernetesStatus"] = {"pvcName": HOSTILE, "namespace": HOSTILE}
    state = reduce_objects(
        {
            "volumes": [v],
            "backups": [backup("b", HOSTILE, "Error", "2026-07-01T00:00:00Z", target=HOSTILE)],
            "nodes": [node],
            "settings": [{"metadata": {"name": "current-longhorn-version"}, "value": HOSTILE}],
        }
    )
    s = render(state, cluster=HOSTILE)
    base = {"volume": HOSTILE, "pvc": HOSTILE, "pvc_namespace": HOSTILE, "node": HOSTILE}
    assert series(s, "longhorn_volume_capacity_bytes", **base) == 10737418240
    assert series(s, "longhorn_backups", volume=HOSTILE, backup_target=HOSTILE, state="Error") == 1
    assert (
        series(s, "longhorn_node_status", node=HOSTILE, condition="ready", condition_reason=HOSTILE)
        == 0
    )
    assert series(s, "longhorn_disk_capacity_bytes", node=HOSTILE, disk=HOSTILE) == 491106525184
    assert series(s, "longhorn_version_info", version=HOSTILE) == 1
    built = families(state, SnapshotChurn())
    assert_same_as_prometheus_client(built, HOSTILE)


def test_recurring_jobs() -> None:
    job = {
        "metadata": {"name": "backup-daily"},
        "spec": {"task": "backup", "cron": "0 2 * * *", "groups": ["z", "default"], "retain": 14},
        "status": {"executionCount": 123},
    }
    s = render(reduce_objects({"recurringjobs": [job, {"metadata": {"name": "bare"}}]}))
    assert (
        series(
            s,
            "longhorn_recurring_job_info",
            recurring_job="backup-daily",
            task="backup",
            groups="default,z",
            cron="0 2 * * *",
            retain="14",
            concurrency="",  # absent: unknown, not 0
        )
        == 1
    )
    assert series(s, "longhorn_recurring_job_executions_total", recurring_job="backup-daily") == 123
    # A job that never ran has no executionCount yet: no sample, rather than an invented 0.
    assert (
        "longhorn_recurring_job_executions_total",
        frozenset({("recurring_job", "bare")}),
    ) not in s


# --------------------------------------------------------------------------- cardinality


def expected_series(state: ClusterState) -> tuple[int, int]:
    """docs/metrics.md "Series per cluster": (upper bound, count of the optional series
    that are absent). The bound minus the absent ones is the exact count."""
    vols = state.volumes.values()
    v = len(state.volumes)
    s_ = sum(1 for x in vols if x.snapshots and x.snapshots.count)
    c = sum(len(x.conditions) for x in vols)
    r = sum(1 for x in vols if x.rebuild_progress is not None)
    p, q, t = len(state.backups), len(state.backup_volumes), len(state.backup_targets)
    n = len(state.nodes)
    k = sum(len(x.conditions) for x in state.nodes.values())
    d = sum(len(x.disks) for x in state.nodes.values())
    e = sum(len(disk.conditions) for x in state.nodes.values() for disk in x.disks)
    j = len(state.recurring_jobs)
    bound = 29 * v + 2 * s_ + c + r + 13 * p + q + 2 * t + 2 * j + 1 + k + 9 * n + 3 * d + e + 1
    absent = (
        sum(
            (b.last_latency is None)
            + (b.last_size is None)
            + (b.last_uploaded is None)
            + (b.oldest_in_progress is None)
            + (b.last_failure is None)
            for b in state.backups.values()
        )
        + sum(x.healthy is None for x in vols)
        + sum(x.backup_interval is None for x in vols)
    )
    return bound, absent


def test_cardinality_formula_on_a_simulated_cluster() -> None:
    spec = ClusterSpec(
        name="card",
        volumes=120,
        snapshots_per_volume=5,
        backups_per_volume=4,
        nodes=6,
        disks_per_node=2,
        degraded_volumes=10,
        detached_volumes=10,
        failing_backups=5,
        stuck_backups=5,
        nodes_down=1,
        hostile_names=True,
    )
    state, churn, _ = reduce_simulated(spec)
    count = sum(len(f.samples) for f in families(state, churn))
    bound, absent = expected_series(state)
    assert count == bound - absent
    assert absent < bound // 10


def test_churn_counters_need_an_update() -> None:
    """longhorn_families does not touch the churn state: without update() there are no
    counters yet, and rendering twice gives the same bytes."""
    state = reduce_objects({"volumes": [volume("v")], "snapshots": []})
    churn = SnapshotChurn()
    assert "longhorn_volume_snapshots_created_total" not in names(render(state, churn))
    churn.update(state)
    first = encode(families(state, churn), "c")
    assert first == encode(families(state, churn), "c")
    assert b"longhorn_volume_snapshots_created_total{" in first


@pytest.mark.parametrize(
    "missing",
    [set(), {"snapshots"}, {"replicas", "engines"}, {"backups", "backupvolumes"}, {"settings"}],
)
def test_groups_joined_in_any_order_give_the_same_metrics(missing: set[str]) -> None:
    """A refresh joins and builds each group of lists (``JOINS``) as soon as its lists
    end, in whatever order that is. Joined last group first, the families, the summary
    and the triage view are those of one join of everything."""
    from fleet_exporter.longhorn import JOINS, RESOURCES
    from fleet_exporter.longhorn.catalogue import building_group
    from fleet_exporter.longhorn.reduce import ClusterReducer
    from simulator.objects import build_cluster
    from tests.test_longhorn import NOW, page

    spec = ClusterSpec(
        name="joins",
        volumes=40,
        nodes=4,
        degraded_volumes=4,
        faulted_volumes=2,
        detached_volumes=4,
        unscheduled_volumes=2,
        failing_backups=3,
        seed=11,
    )
    objects = build_cluster(spec, now=NOW)
    complete = frozenset(RESOURCES) - missing

    def reducer() -> ClusterReducer:
        r = ClusterReducer(now=NOW)
        for resource in RESOURCES:
            add_page(r, resource, page(objects.items[resource]))
        return r

    whole_churn, staged_churn = SnapshotChurn(), SnapshotChurn()
    whole = finish(reducer(), complete)
    whole_churn.update(whole)
    expected = encoded(whole, whole_churn, "c")

    staged = reducer()
    writer = Writer("c")
    built: dict[str, list[Encoded]] = {}
    for join in reversed(JOINS):
        state = drain(staged.joining(join, complete & join.lists))
        staged_churn.update(state)
        built[join.name] = drain(building_group(join, state, staged_churn, writer))
    assert [f for join in JOINS for f in built[join.name]] == expected
    final = staged.state(complete)
    assert summarize(final) == summarize(whole)
    assert triage(final) == triage(whole)
    assert staged_churn.created == whole_churn.created
