"""The Longhorn model: typed page decoding, per-page reduction, the join, health rules,
snapshot churn, the fleet summary and the triage view.

Real objects come from ../shared/longhorn/examples/; the cases they lack are built here
from the CRD shapes (../shared/longhorn/crds.yaml, reference/longhorn.md §2-4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_exporter.kube import peek_continue
from fleet_exporter.longhorn import CORE_RESOURCES, RESOURCES
from fleet_exporter.longhorn.churn import SnapshotChurn
from fleet_exporter.longhorn.health import summarize
from fleet_exporter.longhorn.records import ClusterState
from fleet_exporter.longhorn.reduce import ClusterReducer
from fleet_exporter.longhorn.triage import triage
from fleet_exporter.longhorn.wire import PageError, parse_time, to_number
from simulator.fleet import ClusterSpec
from simulator.objects import build_cluster

from .steps import add_page, finish

SHARED = Path(__file__).resolve().parents[2] / "shared"
NOW = parse_time("2026-07-10T00:00:00Z")
assert NOW is not None
ALL = frozenset(RESOURCES)
EXAMPLE_VOLUME = "pvc-4d80a091-3336-45a2-88f1-2aad621c5c45"


def example(name: str) -> dict[str, Any]:
    path = SHARED / "longhorn" / "examples" / name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: the tests read the shared Longhorn examples from ../shared "
            "beside the clone (CI checks it out there)"
        )
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- builders


def page(items: list[dict[str, Any]], cont: str = "", rv: str = "42", kind: str = "List") -> bytes:
    """A list page as kube-apiserver sends it (its keys in sorted order)."""
    meta = {"resourceVersion": rv, **({"continue": cont} if cont else {})}
    body = {"apiVersion": "longhorn.io/v1beta2", "items": items, "kind": kind, "metadata": meta}
    return json.dumps(body).encode()


def meta(name: str, created: str = "2026-07-01T00:00:00Z", **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "longhorn-system",
        "creationTimestamp": created,
        "labels": labels,
    }


def cond(ctype: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": "",
        "lastTransitionTime": "2026-07-01T00:00:00Z",
    }


def volume(
    name: str,
    state: str = "attached",
    robustness: str = "healthy",
    replicas: int = 3,
    node: str = "n1",
    conditions: list[dict[str, str]] | None = None,
    **status: Any,
) -> dict[str, Any]:
    return {
        "metadata": meta(name, longhornvolume=name),
        "spec": {
            "size": "10737418240",
            "numberOfReplicas": replicas,
            "frontend": "blockdev",
            "dataEngine": "v1",
            "accessMode": "rwo",
            "dataLocality": "disabled",
            "backupTargetName": "default",
        },
        "status": {
            "state": state,
            "robustness": robustness,
            "ownerID": node,
            "currentNodeID": node if state == "attached" else "",
            "actualSize": 1048576,
            "lastBackupAt": "",
            "conditions": conditions
            if conditions is not None
            else [cond("Scheduled", "True"), cond("TooManySnapshots", "False")],
            "kubernetesStatus": {"pvcName": f"claim-{name}", "namespace": "apps"},
            **status,
        },
    }


def replica(
    name: str, vol: str, node: str = "n1", failed_at: str = "", active: bool = True
) -> dict[str, Any]:
    return {
        "metadata": meta(name, longhornvolume=vol, longhornnode=node),
        "spec": {
            "volumeName": vol,
            "nodeID": node,
            "failedAt": failed_at,
            "active": active,
            "volumeSize": "10737418240",
        },
        "status": {"currentState": "running" if not failed_at else "error"},
    }


def engine(
    name: str,
    vol: str,
    modes: dict[str, str],
    addresses: dict[str, str],
    rebuild: dict[str, dict[str, Any]] | None = None,
    node: str = "n1",
    active: bool = True,
    read_only: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": meta(name, longhornvolume=vol),
        "spec": {
            "volumeName": vol,
            "nodeID": node,
            "active": active,
            "replicaAddressMap": addresses,
        },
        "status": {
            "currentState": "running",
            "replicaModeMap": modes,
            "currentReplicaAddressMap": addresses,
            "rebuildStatus": rebuild or {},
            "conditions": [cond("FilesystemReadOnly", "True" if read_only else "False")],
        },
    }


def snapshot(
    name: str, vol: str, created: str, size: int, removed: bool = False, user: bool = True
) -> dict[str, Any]:
    return {
        "metadata": meta(name, created, longhornvolume=vol),
        "spec": {"volume": vol, "createSnapshot": user},
        "status": {
            "creationTime": created,
            "size": size,
            "markRemoved": removed,
            "userCreated": user,
            "readyToUse": not removed,
        },
    }


def backup(
    name: str,
    vol: str,
    state: str,
    created: str,
    done: str = "",
    size: str = "",
    uploaded: str = "",
    target: str = "default",
    error: str = "",
) -> dict[str, Any]:
    return {
        "metadata": meta(name, created, **{"backup-volume": vol, "backup-target": target}),
        "spec": {"snapshotName": f"snap-{name}", "labels": {}},
        "status": {
            "state": state,
            "backupCreatedAt": done,
            "snapshotCreatedAt": created,
            "size": size,
            "newlyUploadDataSize": uploaded,
            "volumeName": vol,
            "backupTargetName": target,
            "error": error,
            "lastSyncedAt": None,
        },
    }


def reduce_objects(
    objects: dict[str, list[dict[str, Any]]], complete: frozenset[str] = ALL
) -> ClusterState:
    reducer = ClusterReducer(now=NOW)
    for resource, items in objects.items():
        info = add_page(reducer, resource, page(items))
        assert info.malformed == 0, resource
    return finish(reducer, complete)


def reduce_simulated(
    spec: ClusterSpec, complete: frozenset[str] = ALL, refreshes: int = 1
) -> tuple[ClusterState, SnapshotChurn, dict[str, tuple[int, int]]]:
    """A simulated cluster through the reducer in pages of 500, ``refreshes`` times (so
    churn counters exist after two): the state, the churn, and (objects, malformed) per
    resource as the last refresh listed them."""
    objects = build_cluster(spec, now=NOW)
    churn = SnapshotChurn()
    for _ in range(refreshes):
        reducer = ClusterReducer(now=NOW)
        listed: dict[str, tuple[int, int]] = {}
        for resource in RESOURCES:
            items = objects.items[resource]
            infos = [
                add_page(reducer, resource, page(items[start : start + 500]))
                for start in range(0, max(len(items), 1), 500)
            ]
            listed[resource] = (sum(i.items for i in infos), sum(i.malformed for i in infos))
        state = finish(reducer, complete)
        churn.update(state)
    return state, churn, listed


# --------------------------------------------------------------------------- examples


def test_resource_lists() -> None:
    assert len(RESOURCES) == 10
    assert set(CORE_RESOURCES) <= set(RESOURCES)


def test_example_volume_and_replica() -> None:
    state = reduce_objects(
        {"volumes": [example("volume.yaml")], "replicas": [example("replica.yaml")]}
    )
    v = state.volumes[EXAMPLE_VOLUME]
    assert (v.capacity, v.actual_size) == (21474836480.0, 20466663424.0)
    assert (v.state, v.robustness, v.number_of_replicas) == ("attached", "healthy", 3)
    assert (v.pvc, v.pvc_namespace) == ("longhorn-rwx-pvc-run-002", "storage-benchmark-rwx")
    assert (v.node, v.attached_node, v.backup_target) == ("dauwalter", "dauwalter", "default")
    assert (v.frontend, v.data_engine, v.access_mode, v.data_locality) == (
        "blockdev",
        "v1",
        "rwx",
        "disabled",
    )
    assert v.last_backup_at == 0.0  # lastBackupAt: "" means never
    assert [(c.type, c.status) for c in v.conditions] == [
        ("WaitForBackingImage", "False"),
        ("TooManySnapshots", "False"),
        ("Scheduled", "True"),
        ("Restore", "False"),
    ]
    assert v.healthy is True
    # The one replica in the examples: on walmsley, running, not failed; no engine listed,
    # so it has no mode and counts in none of healthy/rebuilding/failed.
    assert v.replicas == 1
    assert (v.replicas_healthy, v.replicas_rebuilding, v.replicas_failed) == (0, 0, 0)
    (r,) = v.replica_views
    assert (r.name, r.node, r.state, r.failed_at, r.mode) == (
        "pvc-4d80a091-3336-45a2-88f1-2aad621c5c45-r-ae59f396",
        "walmsley",
        "running",
        "",
        "",
    )


def test_example_engine_mode_map_with_stale_entry() -> None:
    """The example engine (captured during a disk eviction) has 4 map entries for 3
    addresses; the 4th names a replica that no longer exists and must be ignored."""
    eng = example("engine.yaml")
    assert len(eng["status"]["replicaModeMap"]) == 4
    assert len(eng["spec"]["replicaAddressMap"]) == 3
    live = sorted(eng["spec"]["replicaAddressMap"])
    state = reduce_objects(
        {
            "volumes": [volume("vol1", node="shuo-k8s-worker-1")],
            "replicas": [replica(name, "vol1", node=f"node-{i}") for i, name in enumerate(live)],
            "engines": [eng],
        }
    )
    v = state.volumes["vol1"]
    assert (v.replicas, v.replicas_healthy, v.replicas_rebuilding, v.replicas_failed) == (
        3,
        3,
        0,
        0,
    )
    assert [r.mode for r in v.replica_views] == ["RW", "RW", "RW"]
    assert "vol1-r-47418d68" not in {r.name for r in v.replica_views}
    assert v.rebuild_progress is None  # rebuildStatus: {}
    assert v.read_only is False


def test_example_node_conditions_and_disk() -> None:
    state = reduce_objects({"nodes": [example("node.yaml")]})
    n = state.nodes["kubernetes-node-1"]
    assert [(c.type, c.status) for c in n.conditions] == [
        ("Ready", "True"),
        ("Schedulable", "True"),
        ("MountPropagation", "True"),
        ("RequiredPackages", "True"),
        ("Multipathd", "True"),
        ("KernelModulesLoaded", "True"),
        ("NFSClientInstalled", "True"),
    ]
    assert n.allow_scheduling and n.ready and not n.trouble
    (d,) = n.disks
    assert (d.name, d.path) == ("nvme-1", "/mnt/nvme")
    assert (d.capacity, d.available, d.scheduled, d.reserved) == (
        491106525184.0,
        491048140800.0,
        0.0,
        0.0,
    )
    assert d.usage == 58384384.0
    assert [(c.type, c.status) for c in d.conditions] == [
        ("Ready", "True"),
        ("Schedulable", "True"),
    ]


def test_example_v1beta1_backup_target_map_conditions() -> None:
    """v1beta1 conditions are a map keyed by type; the support-bundle serializer wrote
    empty times as the string "null"."""
    state = reduce_objects({"backuptargets": [example("backuptarget-v1beta1.yaml")]})
    t = state.backup_targets["default"]
    assert (t.available, t.last_synced, t.poll_interval) == (False, 0.0, "5m0s")  # never
    assert [(c.type, c.status, c.reason, c.message) for c in t.conditions] == [
        ("Unavailable", "True", "Unavailable", "backup target URL is empty")
    ]


# --------------------------------------------------------------------------- decoding


def test_page_info_and_pagination_metadata() -> None:
    reducer = ClusterReducer(now=NOW)
    info = add_page(reducer, "volumes", page([volume("a"), volume("b")], cont="tok-1", rv="77"))
    assert (info.items, info.malformed, info.continue_token, info.resource_version) == (
        2,
        0,
        "tok-1",
        "77",
    )
    info = add_page(reducer, "volumes", page([volume("c")]))
    assert (info.items, info.continue_token) == (1, "")
    assert list(finish(reducer, ALL).volumes) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("body", "guess"),
    [
        # kube-apiserver's key order: the list metadata comes last
        (page([volume("a")], cont="tok-1"), "tok-1"),
        (page([volume("a")]), ""),
        (b'{"items":[],"metadata": {"continue": "spaced"} }', "spaced"),
        # metadata first, or only objects' metadata at the end: no guess
        (b'{"metadata":{"continue":"t"},"items":[{"metadata":{"name":"a"}}]}', ""),
        (b'{"items":[],"metadata":{"continue":"t"},"kind":"VolumeList"}', ""),
        (b'{"items":[{"metadata":{"continue":"inner"}}]}', ""),
        (b'{"items":[],"metadata":{"continue":5}}', ""),
        (b"<html>502</html>", ""),
        (b"", ""),
    ],
)
def test_peek_continue_guesses_from_the_tail(body: bytes, guess: str) -> None:
    """The guess only starts the next page early; a wrong one costs a wasted request,
    so anything unusual means no guess, and the decoded page decides."""
    assert peek_continue(body) == guess
    assert peek_continue(bytearray(body)) == guess
    if guess:
        assert add_page(ClusterReducer(), "volumes", body).continue_token == guess


def test_malformed_object_costs_only_itself() -> None:
    bad_type = volume("bad-size")
    bad_type["spec"]["numberOfReplicas"] = {"three": 3}
    bad_conditions = volume("bad-conditions")
    bad_conditions["status"]["conditions"] = "x"
    nameless = volume("")
    reducer = ClusterReducer(now=NOW)
    info = add_page(
        reducer, "volumes", page([volume("a"), bad_type, volume("b"), bad_conditions, nameless, 7])
    )
    # A value of the wrong type costs only that value's sample, not the object.
    assert (info.items, info.malformed, info.unreadable) == (3, 3, 1)
    volumes = finish(reducer, ALL).volumes
    assert list(volumes) == ["a", "b", "bad-size"]
    assert volumes["bad-size"].number_of_replicas is None
    assert volumes["bad-size"].capacity == volumes["a"].capacity


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "not valid JSON"),
        (b'{"items": [', "not valid JSON"),
        (b"[1, 2]", "not a Kubernetes List"),
        (b'{"items": 5}', "not a Kubernetes List"),
        (b'{"kind": "Status", "status": "Failure", "items": []}', "kind 'Status'"),
        (b'{"kind": "VolumeList", "metadata": {}}', "no items field"),
        (b'{"items": [], "metadata": {"continue": 5}}', "not a Kubernetes List"),
    ],
)
def test_page_that_is_not_a_list(body: bytes, reason: str) -> None:
    with pytest.raises(PageError, match=reason) as info:
        add_page(ClusterReducer(), "volumes", body)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_items_null_is_an_empty_page_and_unknown_resource_is_rejected() -> None:
    reducer = ClusterReducer()
    assert add_page(reducer, "volumes", b'{"kind":"VolumeList","items":null}').items == 0
    with pytest.raises(ValueError, match="unknown Longhorn resource 'pods'"):
        add_page(reducer, "pods", page([]))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (123, 123.0),
        ("21474836480", 21474836480.0),
        ("", None),
        (None, None),
        ("1.5", 1.5),
        ("abc", None),
        ("nan", None),
        (True, None),
    ],
)
def test_sizes_may_be_int_string_or_empty(raw: Any, expected: float | None) -> None:
    assert to_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-07-02T15:10:14Z", 1783005014.0),
        ("2026-07-02T15:10:14+02:00", 1782997814.0),
        ("2026-07-02T15:10:14", 1783005014.0),
        ("", None),
        (None, None),
        ("null", None),
        ("yesterday", None),
    ],
)
def test_parse_time(raw: str | None, expected: float | None) -> None:
    assert parse_time(raw) == expected


def test_string_and_int_sizes_across_versions() -> None:
    v = volume("a")
    v["spec"]["size"] = 2048  # an int where Longhorn writes a decimal string
    v["status"]["actualSize"] = "1024"
    state = reduce_objects({"volumes": [v]})
    assert (state.volumes["a"].capacity, state.volumes["a"].actual_size) == (2048.0, 1024.0)


# --------------------------------------------------------------------------- replicas


def _replica_case(
    replicas: list[dict[str, Any]], modes: dict[str, str], **engine_kw: Any
) -> ClusterState:
    addresses = {r["metadata"]["name"]: f"10.0.0.{i}:10000" for i, r in enumerate(replicas)}
    return reduce_objects(
        {
            "volumes": [volume("v", robustness="degraded")],
            "replicas": replicas,
            "engines": [engine("v-e-0", "v", modes, addresses, **engine_kw)],
        }
    )


def test_replica_health_rules() -> None:
    """RW healthy, WO rebuilding, ERR failed, failedAt = failed whatever the map says,
    nodeID "" = unscheduled; inactive replicas are not counted."""
    reps = [
        replica("r-ok", "v"),
        replica("r-wo", "v", node="n2"),
        replica("r-err", "v", node="n3"),
        replica("r-failed-at", "v", node="n4", failed_at="2026-07-09T10:00:00Z"),
        replica("r-unsched", "v", node=""),
        replica("r-inactive", "v", node="n5", active=False),
    ]
    modes = {"r-ok": "RW", "r-wo": "WO", "r-err": "ERR", "r-failed-at": "RW", "r-inactive": "RW"}
    v = _replica_case(reps, modes).volumes["v"]
    assert (v.replicas, v.replicas_healthy, v.replicas_rebuilding) == (5, 1, 1)
    assert (v.replicas_failed, v.replicas_unscheduled) == (2, 1)
    assert {r.name: r.health for r in v.replica_views} == {
        "r-ok": "healthy",
        "r-wo": "rebuilding",
        "r-err": "failed",
        "r-failed-at": "failed",
        "r-unsched": "unscheduled",
        "r-inactive": "healthy",
    }
    assert v.healthy is False  # degraded


def test_rebuild_progress_is_minimum_over_active_rebuilds() -> None:
    reps = [replica("a", "v"), replica("b", "v", node="n2"), replica("c", "v", node="n3")]
    rebuild = {
        "tcp://10.0.0.1:10000": {"isRebuilding": True, "progress": 40, "state": "in_progress"},
        "tcp://10.0.0.2:10000": {"isRebuilding": True, "progress": 75},
        "tcp://10.0.0.9:10000": {"isRebuilding": False, "progress": 3},  # finished/stale
    }
    v = _replica_case(reps, {"a": "RW", "b": "WO", "c": "WO"}, rebuild=rebuild).volumes["v"]
    assert v.rebuild_progress == 0.4
    assert {r.name: r.rebuild_progress for r in v.replica_views} == {"a": None, "b": 0.4, "c": 0.75}
    assert v.replicas_rebuilding == 2


def test_active_engine_is_chosen_during_migration() -> None:
    reps = [replica("a", "v"), replica("b", "v", node="n2")]
    addresses = {"a": "10.0.0.1:1", "b": "10.0.0.2:1"}
    state = reduce_objects(
        {
            "volumes": [volume("v", replicas=2, node="n2")],
            "replicas": reps,
            "engines": [
                engine("v-e-old", "v", {"a": "ERR", "b": "ERR"}, addresses, active=False),
                engine("v-e-1", "v", {"a": "WO", "b": "WO"}, addresses, node="n1"),
                engine("v-e-2", "v", {"a": "RW", "b": "RW"}, addresses, node="n2", read_only=True),
            ],
        }
    )
    v = state.volumes["v"]
    assert (v.replicas_healthy, v.replicas_failed, v.read_only) == (2, 0, True)


def test_failed_resources_are_ignored_entirely() -> None:
    """A resource that failed midway contributes nothing, even the pages it did list."""
    objects = {
        "volumes": [volume("v")],
        "replicas": [replica("a", "v")],
        "engines": [engine("e", "v", {"a": "RW"}, {"a": "1.1.1.1:1"})],
        "snapshots": [snapshot("s", "v", "2026-07-01T00:00:00Z", 5)],
    }
    state = reduce_objects(objects, complete=frozenset({"volumes", "nodes", "engines"}))
    v = state.volumes["v"]
    assert (v.replicas, v.replicas_healthy, v.replicas_unscheduled, v.snapshots) == (
        None,
        None,
        None,
        None,
    )
    assert v.read_only is False
    state = reduce_objects(objects, complete=frozenset({"volumes", "replicas"}))
    v = state.volumes["v"]
    assert (v.replicas, v.replicas_unscheduled, v.replicas_healthy, v.read_only) == (
        1,
        0,
        None,
        None,
    )
    assert reduce_objects(objects, complete=frozenset({"nodes"})).volumes == {}


# --------------------------------------------------------------------------- health


def test_detached_volume_health_from_its_replicas() -> None:
    """Detached volumes read robustness "unknown": healthy when enough replicas are
    scheduled and not failed; unknown (None) when the replica list failed."""
    objects = {
        "volumes": [
            volume("ok", state="detached", robustness="unknown", replicas=2),
            volume("short", state="detached", robustness="unknown", replicas=2),
            volume("attaching", state="attaching", robustness="unknown", replicas=1),
            volume("faulted", state="detached", robustness="faulted", replicas=1),
            volume(
                "unschedulable",
                robustness="healthy",
                conditions=[cond("Scheduled", "False", "ReplicaSchedulingFailure")],
            ),
            volume("weird", state="mystery", robustness="splendid"),
        ],
        "replicas": [
            replica("ok-1", "ok"),
            replica("ok-2", "ok", node="n2"),
            replica("short-1", "short"),
            replica("short-2", "short", node="n2", failed_at="2026-07-09T00:00:00Z"),
            replica("attaching-1", "attaching"),
            replica("faulted-1", "faulted"),
        ],
    }
    state = reduce_objects(objects)
    healthy = {name: v.healthy for name, v in state.volumes.items()}
    assert healthy == {
        "attaching": False,
        "faulted": False,
        "ok": True,
        "short": False,
        "unschedulable": False,
        "weird": False,
    }
    assert state.volumes["weird"].robustness == "unknown"  # unrecognised -> unknown bucket
    assert state.volumes["weird"].state == "mystery"  # kept; the metrics one-hot drops it
    state = reduce_objects(objects, complete=frozenset({"volumes", "nodes"}))
    assert state.volumes["ok"].healthy is None
    assert state.volumes["unschedulable"].healthy is False


# --------------------------------------------------------------------------- snapshots


def test_snapshot_aggregates_exclude_head_and_removed() -> None:
    snaps = [
        snapshot("s1", "v", "2026-07-01T00:00:00Z", 100),
        snapshot("s2", "v", "2026-07-05T12:00:00Z", 250, user=False),
        snapshot("s3", "v", "2026-06-20T00:00:00Z", 1000, removed=True),
        snapshot("volume-head", "v", "2026-07-09T00:00:00Z", 7),
        snapshot("w1", "w", "2026-07-02T00:00:00Z", 3),
    ]
    state = reduce_objects({"volumes": [volume("v"), volume("w"), volume("x")], "snapshots": snaps})
    s = state.volumes["v"].snapshots
    assert s is not None
    assert (s.count, s.size_bytes, s.removed) == (2, 350.0, 1)
    assert (s.oldest, s.newest) == (
        parse_time("2026-07-01T00:00:00Z"),
        parse_time("2026-07-05T12:00:00Z"),
    )
    empty = state.volumes["x"].snapshots
    assert empty is not None
    assert (empty.count, empty.oldest, empty.newest) == (0, None, None)


def test_snapshot_churn() -> None:
    churn = SnapshotChurn()

    def refresh(snaps: list[dict[str, Any]], vols: tuple[str, ...] = ("v", "w")) -> None:
        churn.update(reduce_objects({"volumes": [volume(n) for n in vols], "snapshots": snaps}))

    t1, t2, t3 = "2026-07-01T00:00:00Z", "2026-07-02T00:00:00Z", "2026-07-03T00:00:00Z"
    refresh([snapshot("a", "v", t1, 1), snapshot("b", "v", t2, 1), snapshot("c", "w", t1, 1)])
    assert (churn.created, churn.removed) == ({"v": 0, "w": 0}, {"v": 0, "w": 0})
    # b deleted (markRemoved), d and e created; w unchanged.
    refresh(
        [
            snapshot("a", "v", t1, 1),
            snapshot("b", "v", t2, 1, removed=True),
            snapshot("d", "v", t3, 1),
            snapshot("e", "v", t3, 1),
            snapshot("c", "w", t1, 1),
        ]
    )
    assert (churn.created, churn.removed) == ({"v": 2, "w": 0}, {"v": 1, "w": 0})
    # A refresh whose snapshot list failed changes nothing.
    churn.update(
        reduce_objects({"volumes": [volume("v")], "snapshots": []}, frozenset({"volumes"}))
    )
    assert (churn.created, churn.removed) == ({"v": 2, "w": 0}, {"v": 1, "w": 0})
    # Same name, new creation time: a deleted and recreated snapshot; w is gone.
    refresh(
        [snapshot("a", "v", t2, 1), snapshot("d", "v", t3, 1), snapshot("e", "v", t3, 1)],
        vols=("v",),
    )
    assert (churn.created, churn.removed) == ({"v": 3}, {"v": 2})
    # A volume first seen later starts at 0 whatever it already has.
    refresh([snapshot("z", "new", t1, 1)], vols=("v", "new"))
    assert (churn.created, churn.removed) == ({"v": 3, "new": 0}, {"v": 5, "new": 0})


# --------------------------------------------------------------------------- backups


BACKUPS = [
    # Created here: object at 01:00, upload finished 01:05:30 -> latency 330 s.
    backup(
        "b-old",
        "v",
        "Completed",
        "2026-07-08T01:00:00Z",
        done="2026-07-08T01:05:30Z",
        size="2097152",
        uploaded="1048576",
    ),
    # Newest completed, but synced from the target: object created at sync time, after
    # the upload finished -> last success and size from it, but no latency.
    backup(
        "b-synced",
        "v",
        "Completed",
        "2026-07-09T06:00:00Z",
        done="2026-07-09T02:00:00Z",
        size="4194304",
        uploaded="",
    ),
    backup("b-failed", "v", "Error", "2026-07-09T03:00:00Z", error='s3: "denied"\nretry'),
    backup("b-running", "v", "InProgress", "2026-07-09T20:00:00Z"),
    backup("b-new", "v", "", "2026-07-09T23:00:00Z"),
    backup("b-odd", "v", "Exploded", "2026-07-01T00:00:00Z"),
    backup(
        "b-other",
        "v",
        "Completed",
        "2026-07-09T00:00:00Z",
        done="2026-07-09T00:01:00Z",
        target="s3-dr",
    ),
    backup("b-ghost", "deleted-volume", "Error", "2026-07-09T00:00:00Z"),
]
# Backup objects per state of the pair (v, default) in BACKUPS.
BACKUP_COUNTS = {
    "New": 1,
    "Pending": 0,
    "InProgress": 1,
    "Completed": 2,
    "Error": 1,
    "Unknown": 1,
    "Deleting": 0,
}


def test_backup_pairs_latency_and_synced_backups() -> None:
    state = reduce_objects({"volumes": [volume("v")], "backups": BACKUPS})
    assert list(state.backups) == [("v", "default"), ("v", "s3-dr")]  # ghost volume dropped
    b = state.backups[("v", "default")]
    assert b.last_success == parse_time("2026-07-09T02:00:00Z")
    assert (b.last_success_name, b.last_size, b.last_uploaded) == ("b-synced", 4194304.0, None)
    assert b.last_latency == 330.0
    assert b.last_local == parse_time("2026-07-08T01:05:30Z")
    assert b.counts == BACKUP_COUNTS
    assert b.oldest_in_progress == parse_time("2026-07-09T20:00:00Z")
    assert (b.newest_state, b.newest_key) == ("New", (parse_time("2026-07-09T23:00:00Z"), "b-new"))
    dr = state.backups[("v", "s3-dr")]
    assert (dr.last_latency, dr.newest_state) == (60.0, "Completed")
    assert state.volumes["v"].backup_last_success == parse_time("2026-07-09T02:00:00Z")


def test_summary_exact() -> None:
    failing = [
        backup("f1", "bad", "Completed", "2026-07-08T00:00:00Z", done="2026-07-08T00:01:00Z"),
        backup("f2", "bad", "Error", "2026-07-09T00:00:00Z"),
        backup("o1", "old", "Completed", "2026-07-01T00:00:00Z", done="2026-07-01T00:10:00Z"),
        backup("g1", "good", "Completed", "2026-07-09T20:00:00Z", done="2026-07-09T20:10:00Z"),
    ]
    node_down = example("node.yaml")
    node_down["metadata"]["name"] = "n-down"
    node_down["status"]["conditions"][0] = cond("Ready", "False", "ManagerPodDown")
    node_down["status"]["diskStatus"]["nvme-1"]["conditions"][1] = cond(
        "Schedulable", "False", "DiskPressure"
    )
    settings = [
        {"metadata": meta("current-longhorn-version"), "value": "v1.10.1"},
        {"metadata": meta("backup-target"), "value": ""},
        {"metadata": meta("concurrent-replica-rebuild-per-node-limit"), "value": "5"},
    ]
    state = reduce_objects(
        {
            "volumes": [
                volume("good", replicas=2),
                volume("bad", robustness="degraded"),
                volume("old", state="detached", robustness="unknown", replicas=1),
                volume("never", robustness="faulted"),
            ],
            "replicas": [
                replica("good-1", "good"),
                replica("good-2", "good", node="n2"),
                replica("bad-1", "bad"),
                replica("old-1", "old"),
            ],
            "engines": [
                engine("good-e", "good", {"good-1": "RW", "good-2": "RW"}, {}),
                engine("bad-e", "bad", {"bad-1": "RW"}, {}),
            ],
            "backups": failing,
            "nodes": [example("node.yaml"), node_down],
            "settings": settings,
        }
    )
    s = summarize(state)
    assert s.longhorn_version == "v1.10.1"
    assert (s.volumes, s.volumes_unhealthy) == (4, 2)
    assert s.volumes_by_robustness == {"unknown": 1, "healthy": 1, "degraded": 1, "faulted": 1}
    # good 2-2=0, bad 3-1=2, old: detached and healthy (none missing), never 3-0=3
    assert (s.replicas_missing, s.volumes_missing_replicas) == (5, 2)
    # bad: last success 47 h ago; old: 9 days; good: 3 h 50 min; never: no backup, but no
    # backup job applies to it either (tests/test_counts.py has the cases).
    assert (s.backups_failing, s.backups_overdue, s.volumes_never_backed_up) == (1, 2, 0)
    assert (s.nodes, s.nodes_not_ready, s.disks_with_trouble) == (2, 1, 1)
    assert state.settings == {"current-longhorn-version": "v1.10.1", "backup-target": ""}
    partial = reduce_objects({"volumes": [volume("a")]}, frozenset({"volumes", "nodes"}))
    s = summarize(partial)
    assert (s.replicas_missing, s.backups_failing, s.backups_overdue, s.longhorn_version) == (
        None,
        None,
        None,
        None,
    )


# --------------------------------------------------------------------------- triage

HOSTILE = 'pvc-"quoted"\\back\nline-<b>ü</b>-卷'


def test_triage_lists_trouble_with_untrusted_strings_verbatim() -> None:
    node_down = example("node.yaml")
    node_down["metadata"]["name"] = HOSTILE
    node_down["status"]["conditions"][0] = cond("Ready", "False", "KubernetesNodeNotReady", HOSTILE)
    state = reduce_objects(
        {
            "volumes": [volume("fine"), volume(HOSTILE, robustness="degraded", node=HOSTILE)],
            "replicas": [replica("h-1", HOSTILE, node=HOSTILE), replica("h-2", HOSTILE)],
            "engines": [
                engine(
                    "h-e",
                    HOSTILE,
                    {"h-1": "WO", "h-2": "RW"},
                    {"h-1": "10.0.0.1:1", "h-2": "10.0.0.2:1"},
                    rebuild={"tcp://10.0.0.1:1": {"isRebuilding": True, "progress": 12}},
                )
            ],
            "backups": [backup("hb", HOSTILE, "Error", "2026-07-09T00:00:00Z", error=HOSTILE)],
            "nodes": [example("node.yaml"), node_down],
            "backuptargets": [example("backuptarget-v1beta1.yaml")],
            "recurringjobs": [
                {
                    "metadata": meta("daily"),
                    "spec": {
                        "task": "backup",
                        "cron": "0 2 * * *",
                        "groups": ["default", "db"],
                        "retain": 7,
                        "concurrency": 2,
                    },
                    "status": {"executionCount": 41},
                }
            ],
        }
    )
    t = triage(state)
    assert json.loads(json.dumps(t)) == t  # JSON-ready
    (v,) = t["volumes"]
    assert v["name"] == HOSTILE and v["owner_node"] == HOSTILE
    assert (v["robustness"], v["healthy"], v["replicas_desired"]) == ("degraded", False, 3)
    assert (v["replicas_healthy"], v["replicas_rebuilding"], v["rebuild_progress"]) == (1, 1, 0.12)
    assert v["replicas"][0] == {
        "name": "h-1",
        "node": HOSTILE,
        "mode": "WO",
        "health": "rebuilding",
        "failed_at": "",
        "state": "running",
        "active": True,
        "rebuild_progress": 0.12,
    }
    assert v["last_backup"] == {
        "backup_target": "default",
        "name": "hb",
        "time": parse_time("2026-07-09T00:00:00Z"),
        "state": "Error",
        "error": HOSTILE,
    }
    (n,) = t["nodes"]
    assert n["name"] == HOSTILE and not n["ready"]
    assert n["conditions"] == [
        {"type": "Ready", "status": "False", "reason": "KubernetesNodeNotReady", "message": HOSTILE}
    ]
    assert t["backup_targets"][0]["available"] is False
    assert t["recurring_jobs"] == [
        {
            "name": "daily",
            "task": "backup",
            "groups": ["db", "default"],
            "cron": "0 2 * * *",
            "retain": 7,
            "concurrency": 2,
            "executions": 41.0,
        }
    ]
    assert t["incomplete"] == [] and t["now"] == NOW


def test_a_list_going_round_in_circles_is_refused_at_its_second_round() -> None:
    """A server whose continue tokens loop serves the same objects again: caught when a
    page starts with an object an earlier page of that list started with."""
    reducer = ClusterReducer(now=NOW)
    first = page([volume("a"), volume("b")], cont="t1")
    add_page(reducer, "volumes", first)
    add_page(reducer, "volumes", page([volume("c")], cont="t2"))
    add_page(reducer, "replicas", page([replica("a-r1", "a")]))  # another list: its own
    with pytest.raises(PageError, match="'a' starts a page again: the continue tokens go round"):
        add_page(reducer, "volumes", first)
