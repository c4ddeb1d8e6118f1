"""The simulated fleet: objects shaped like real Longhorn CRs, and a fake API server that
behaves like kube-apiserver (TLS, auth, paging) and misbehaves on request (faults).

Everything runs on real sockets over real TLS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import copy
import json
import os
import re
import signal
import ssl
import stat
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

from simulator.faults import FaultSettings
from simulator.fleet import (
    ClusterSpec,
    demo_fleet,
    sized_fleet,
    small_fleet,
)
from simulator.objects import KINDS, build_cluster
from simulator.server import SimulatedFleet
from simulator.store import ClusterStore

SHARED = Path(__file__).resolve().parents[2] / "shared"
NOW = 1_780_000_000.0  # a fixed clock: objects are byte-identical run to run
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
LIST_PATH = "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/"
MiB = 1024 * 1024


# -- CRD schemas -----------------------------------------------------------------------------


def _nullable(node: Any) -> Any:
    """OpenAPI `nullable: true` is not JSON Schema: turn `type: X` into `[X, "null"]`."""
    if isinstance(node, dict):
        if node.get("nullable") and "type" in node:
            node["type"] = [node["type"], "null"]
        for child in node.values():
            _nullable(child)
    elif isinstance(node, list):
        for child in node:
            _nullable(child)
    return node


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every version in shared/longhorn/crds.yaml."""
    crds = SHARED / "longhorn" / "crds.yaml"
    if not crds.is_file():
        pytest.fail(f"{crds} is missing: clone the shared material beside the repository")
    schemas = {}
    for doc in yaml.safe_load_all(crds.read_text()):
        if not doc:
            continue
        for version in doc["spec"]["versions"]:
            key = (f"{doc['spec']['group']}/{version['name']}", doc["spec"]["names"]["kind"])
            schemas[key] = _nullable(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return schemas


_VALUE_KEYWORDS = ("enum", "minimum", "maximum", "minLength")


def _shape(value: Any, schema: dict[str, Any]) -> Any:
    """What Draft 7 validation of `value` against these CRD schemas depends on: types and
    keys, plus the value wherever the schema constrains values. Keys of free-form maps
    (`additionalProperties`, e.g. replica or snapshot names) collapse, so thousands of
    objects reduce to a few hundred distinct shapes."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and isinstance(extra, dict):
            return ("map", frozenset(_shape(v, extra) for v in value.values()))
        props = props or {}
        return ("obj", frozenset((k, _shape(v, props.get(k, {}))) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", frozenset(_shape(v, schema.get("items", {})) for v in value))
    if any(keyword in schema for keyword in _VALUE_KEYWORDS):
        return (type(value).__name__, value)
    return type(value).__name__


def _errors(schemas: dict, obj: dict[str, Any]) -> list[str]:
    schema = schemas[(obj["apiVersion"], obj["kind"])]
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


def test_demo_fleet_objects_validate_against_the_real_crds(crd_schemas):
    specs = [s for s in demo_fleet() if not s.unreachable]
    assert any(s.hostile_names for s in specs) and any(s.malformed for s in specs)
    checked: dict[tuple[str, Any], str] = {}
    kinds = Counter()
    for spec in specs:
        objects = build_cluster(spec, now=NOW)
        malformed = set(objects.malformed)
        for plural, objs in objects.items.items():
            for obj in objs:
                if (plural, obj["metadata"]["name"]) in malformed:
                    assert _errors(crd_schemas, obj), f"{plural} {obj['metadata']['name']}"
                    continue
                kinds[plural] += 1
                schema = crd_schemas[(obj["apiVersion"], obj["kind"])]
                key = (obj["kind"], _shape(obj, schema))
                if key not in checked:
                    errors = _errors(crd_schemas, obj)
                    assert not errors, f"{spec.name} {plural}/{obj['metadata']['name']}: {errors}"
                    checked[key] = obj["metadata"]["name"]
    assert set(kinds) == set(KINDS)
    assert kinds["snapshots"] > 10_000  # the whole fleet was looked at, not a sample
    assert len(checked) < sum(kinds.values()) / 20  # and the dedupe did its job


def test_malformed_objects_are_exactly_the_ones_that_fail(crd_schemas):
    spec = ClusterSpec("bad-apples", volumes=10, malformed=True, hostile_names=True)
    objects = build_cluster(spec, now=NOW)
    malformed = set(objects.malformed)
    assert {p for p, _ in malformed} >= {"volumes", "engines", "replicas", "snapshots", "nodes"}
    failing = {
        (plural, obj["metadata"]["name"])
        for plural, objs in objects.items.items()
        for obj in objs
        if _errors(crd_schemas, obj)
    }
    assert failing == malformed
    # They sit among good objects (not all at one end), so one page mixes both.
    names = [o["metadata"]["name"] for o in objects.items["volumes"]]
    bad_positions = [names.index(n) for p, n in malformed if p == "volumes"]
    assert max(bad_positions) > 0 and min(bad_positions) < len(names) - 1
    # And a malformed build changes nothing about the good objects.
    clean = build_cluster(ClusterSpec("bad-apples", volumes=10, hostile_names=True), now=NOW)
    assert len(clean.items["volumes"]) == len(objects.items["volumes"]) - 3


# -- object content ------------------------------------------------------------------------


def _by_name(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs}


def _condition(obj: dict, ctype: str) -> dict:
    (found,) = [c for c in obj["status"]["conditions"] if c["type"] == ctype]
    return found


def test_build_is_deterministic_and_sorted_like_etcd():
    spec = ClusterSpec("eu-west-prod-01", volumes=15, seed=7, hostile_names=True)
    first, again = build_cluster(spec, now=NOW), build_cluster(spec, now=NOW)
    assert json.dumps(first.items) == json.dumps(again.items)
    other = build_cluster(ClusterSpec("eu-west-prod-01", volumes=15, seed=8), now=NOW)
    assert (
        first.items["volumes"][0]["metadata"]["name"]
        != other.items["volumes"][0]["metadata"]["name"]
    )
    for objs in first.items.values():
        names = [o["metadata"]["name"].encode() for o in objs]
        assert names == sorted(names)


def test_encodings_follow_longhorns_go_types():
    objects = build_cluster(ClusterSpec("enc", volumes=12, pending_backups=2), now=NOW)
    items = objects.items
    for vol in items["volumes"]:
        assert vol["spec"]["size"].isdigit() and isinstance(vol["status"]["actualSize"], int)
        assert vol["status"]["kubernetesStatus"].keys() >= {"pvcName", "namespace"}
        assert vol["metadata"]["labels"]["longhornvolume"] == vol["metadata"]["name"]
        meta = vol["metadata"]
        assert RFC3339.match(meta["creationTimestamp"]) and meta["uid"] and meta["resourceVersion"]
        assert all(c["status"] in ("True", "False") for c in vol["status"]["conditions"])
    for rep in items["replicas"]:
        assert "failedAt" in rep["spec"] and rep["metadata"]["labels"]["longhornnode"]
        assert rep["spec"]["volumeSize"].isdigit()
    for snap in items["snapshots"]:
        st = snap["status"]
        assert isinstance(st["size"], int) and RFC3339.match(st["creationTime"])
        assert isinstance(st["userCreated"], bool) and isinstance(st["markRemoved"], bool)
    states = Counter(b["status"]["state"] for b in items["backups"])
    assert states["Completed"] > 0 and states[""] + states["Pending"] == 2
    for backup in items["backups"]:
        st = backup["status"]
        assert isinstance(st["size"], str) and isinstance(st["newlyUploadDataSize"], str)
        assert st["backupTargetName"] == "default"
        assert backup["metadata"]["labels"]["backup-volume"] == st["volumeName"]
        assert backup["metadata"]["labels"]["backup-target"] == "default"
        if st["state"] == "Completed":
            assert RFC3339.match(st["backupCreatedAt"]) and st["size"].isdigit()
        else:
            assert st["backupCreatedAt"] == "" and st["size"] == ""
    # Backups re-synced from the target carry a creationTimestamp after they finished.
    synced = [
        b
        for b in items["backups"]
        if b["status"]["backupCreatedAt"]
        and b["metadata"]["creationTimestamp"] > b["status"]["backupCreatedAt"]
    ]
    assert synced
    for engine in items["engines"]:
        if engine["status"]["currentState"] == "running":
            assert "volume-head" in engine["status"]["snapshots"]
            modes = set(engine["status"]["replicaModeMap"].values())
            assert modes <= {"RW", "WO", "ERR"}
    settings = {s["metadata"]["name"]: s["value"] for s in items["settings"]}
    assert settings["current-longhorn-version"] == "v1.10.1"
    assert json.loads(settings["default-replica-count"]) == {"v1": "3", "v2": "3"}
    assert settings["storage-over-provisioning-percentage"] == "100"
    assert settings["snapshot-max-count"] == "250"
    assert items["instancemanagers"] and items["engineimages"] and items["recurringjobs"]


def test_older_longhorn_versions_lack_newer_fields():
    items = build_cluster(ClusterSpec("old", volumes=3, longhorn_version="v1.6.2"), now=NOW).items
    settings = {s["metadata"]["name"]: s["value"] for s in items["settings"]}
    assert settings["default-replica-count"] == "3"
    assert settings["backup-target"].startswith("s3://")
    assert all("backupTargetName" not in b["status"] for b in items["backups"])
    assert all("newlyUploadDataSize" not in b["status"] for b in items["backups"])


def test_health_knobs_show_up_in_the_objects():
    spec = ClusterSpec(
        "sick",
        volumes=40,
        nodes=5,
        disks_per_node=2,
        degraded_volumes=4,
        faulted_volumes=1,
        detached_volumes=3,
        unscheduled_volumes=2,
        too_many_snapshots_volumes=2,
        failing_backups=3,
        stuck_backups=2,
        overdue_backups=2,
        never_backed_up_volumes=4,
        backup_target_available=False,
        nodes_down=1,
        disks_under_pressure=2,
        longhorn_version="v1.11.1",
    )
    objects = build_cluster(spec, now=NOW)
    items, summary = objects.items, objects.summary
    volumes = items["volumes"]
    robustness = Counter(v["status"]["robustness"] for v in volumes)
    assert robustness["faulted"] == summary["volumes_faulted"] >= 1
    assert robustness["unknown"] == summary["volumes_detached"] == 3
    # Degraded: the knob's volumes plus those with a replica on the down node.
    assert robustness["degraded"] == summary["volumes_degraded"] + summary["volumes_unscheduled"]
    assert summary["volumes_degraded"] >= 4
    engines = {e["spec"]["volumeName"]: e for e in items["engines"]}
    for vol in volumes:
        engine = engines[vol["metadata"]["name"]]
        if vol["status"]["robustness"] == "unknown":
            assert vol["status"]["state"] == "detached"
            assert engine["status"]["currentState"] == "stopped"
            assert not engine["status"]["replicaModeMap"]
    rebuilding = [e for e in items["engines"] if "WO" in e["status"]["replicaModeMap"].values()]
    assert rebuilding
    for engine in rebuilding:
        (entry,) = engine["status"]["rebuildStatus"].items()
        assert entry[0].startswith("tcp://") and 0 < entry[1]["progress"] < 100
    failed = [r for r in items["replicas"] if r["spec"]["failedAt"]]
    assert len(failed) == summary["replicas_failed"] > 0
    unscheduled = [v for v in volumes if _condition(v, "Scheduled")["status"] == "False"]
    assert len(unscheduled) == 2
    assert all(_condition(v, "Scheduled")["reason"] for v in unscheduled)
    tms = [v for v in volumes if _condition(v, "TooManySnapshots")["status"] == "True"]
    assert len(tms) == 2
    states = Counter(b["status"]["state"] for b in items["backups"])
    assert states["Error"] == 3 and states["InProgress"] == 2
    stuck = [b for b in items["backups"] if b["status"]["state"] == "InProgress"]
    for backup in stuck:
        created = time.strptime(backup["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
        assert NOW - calendar.timegm(created) > 6 * 3600  # past LonghornBackupStuck's 6 h
    never = [v for v in volumes if v["status"]["lastBackupAt"] == ""]
    assert len(never) >= 4
    backed_up = {b["spec"]["volumeName"] for b in items["backupvolumes"]}
    assert len(backed_up) == 40 - 4
    (target,) = items["backuptargets"]
    assert target["status"]["available"] is False
    assert _condition(target, "Unavailable")["status"] == "True"
    down = [n for n in items["nodes"] if _condition(n, "Ready")["status"] == "False"]
    assert len(down) == 1 and _condition(down[0], "Ready")["reason"]
    pressured = [
        d
        for n in items["nodes"]
        for d in n["status"]["diskStatus"].values()
        if any(c["type"] == "Schedulable" and c["status"] == "False" for c in d["conditions"])
    ]
    assert len(pressured) == 2
    assert all(d["storageAvailable"] < d["storageMaximum"] * 0.06 for d in pressured)
    assert all("conditions" in im["status"] for im in items["instancemanagers"])  # v1.11+


def _epoch(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def _per_volume(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for obj in objs:
        out.setdefault(obj["spec"]["volumeName"], []).append(obj)
    return out


def test_on_call_states_show_up_in_the_objects():
    spec = ClusterSpec(
        "on-call",
        volumes=24,
        nodes=4,
        read_only_volumes=2,
        near_capacity_volumes=2,
        detached_failed_volumes=2,
        unscheduled_extra_volumes=2,
    )
    objects = build_cluster(spec, now=NOW)
    items, summary = objects.items, objects.summary
    volumes = _by_name(items["volumes"])
    engines = {e["spec"]["volumeName"]: e for e in items["engines"]}
    replicas = _per_volume(items["replicas"])

    # A read-only filesystem: the condition of a running engine, without a reason, as
    # longhorn-manager's instance handler sets it.
    read_only = [
        n for n, e in engines.items() if _condition(e, "FilesystemReadOnly")["status"] == "True"
    ]
    assert len(read_only) == summary["volumes_read_only"] == 2
    for name in read_only:
        assert engines[name]["status"]["currentState"] == "running"
        assert volumes[name]["status"]["state"] == "attached"
        assert _condition(engines[name], "FilesystemReadOnly")["reason"] == ""
    # Near capacity: 93-108 % of the size, the others at most 90 %.
    full = [
        n for n, v in volumes.items() if v["status"]["actualSize"] > 0.9 * int(v["spec"]["size"])
    ]
    assert len(full) == summary["volumes_near_capacity"] == 2
    # Detached after a replica failed: robustness unknown, too few usable replicas.
    detached_failed = [
        n
        for n, v in volumes.items()
        if v["status"]["state"] == "detached" and any(r["spec"]["failedAt"] for r in replicas[n])
    ]
    assert len(detached_failed) == summary["volumes_detached_failed"] == 2
    for name in detached_failed:
        assert volumes[name]["status"]["robustness"] == "unknown"
        usable = [r for r in replicas[name] if r["spec"]["nodeID"] and not r["spec"]["failedAt"]]
        assert len(usable) < volumes[name]["spec"]["numberOfReplicas"]
    # One replica more than wanted (replica auto-balance) finds no room: Scheduled False,
    # robustness healthy, since every wanted replica is RW (longhorn/longhorn#11916).
    extra = [n for n, v in volumes.items() if v["spec"]["replicaAutoBalance"] == "best-effort"]
    assert len(extra) == summary["volumes_unscheduled_extra"] == 2
    for name in extra:
        volume = volumes[name]
        assert volume["status"]["robustness"] == "healthy"
        scheduled = _condition(volume, "Scheduled")
        assert (scheduled["status"], scheduled["reason"]) == ("False", "ReplicaSchedulingFailure")
        (unplaced,) = [r for r in replicas[name] if not r["spec"]["nodeID"]]
        assert not unplaced["spec"]["failedAt"]
        modes = list(engines[name]["status"]["replicaModeMap"].values())
        assert modes.count("RW") == volume["spec"]["numberOfReplicas"] == len(replicas[name]) - 1


def test_a_down_node_keeps_its_replicas_failed_and_their_volumes_degraded():
    spec = ClusterSpec(
        "down", volumes=16, nodes=4, nodes_down=1, detached_volumes=3, degraded_volumes=6, seed=10
    )
    items = build_cluster(spec, now=NOW).items
    (down,) = [
        n["metadata"]["name"] for n in items["nodes"] if _condition(n, "Ready")["status"] == "False"
    ]
    volumes = _by_name(items["volumes"])
    engines = {e["spec"]["volumeName"]: e for e in items["engines"]}
    held = [r for r in items["replicas"] if r["spec"]["nodeID"] == down]
    attached = [
        r for r in held if volumes[r["spec"]["volumeName"]]["status"]["state"] == "attached"
    ]
    assert attached and len(attached) < len(held)  # some of each
    for replica in held:
        volume = volumes[replica["spec"]["volumeName"]]
        if replica not in attached:  # nothing ran there: it only cannot start
            assert (
                replica["status"]["currentState"] == "stopped" and not replica["spec"]["failedAt"]
            )
            continue
        assert replica["spec"]["failedAt"] and replica["spec"]["desireState"] == "stopped"
        assert replica["status"]["currentState"] == "unknown" and replica["status"]["started"]
        modes = engines[volume["metadata"]["name"]]["status"]["replicaModeMap"]
        assert modes[replica["metadata"]["name"]] == "ERR"
        assert volume["status"]["robustness"] == "degraded"
    (manager,) = [m for m in items["instancemanagers"] if m["spec"]["nodeID"] == down]
    assert manager["status"]["currentState"] == "unknown"


def _age_bucket(age: float) -> str:
    if age < 1.6 * 3600:
        return "hours"
    if 23 * 3600 < age < 25.6 * 3600:
        return "a day"
    return "days" if age > 2 * 86400 else f"{age / 3600:.1f} h"


@pytest.mark.parametrize("hours_later", [0, 5, 11, 17, 23])
def test_backup_ages_do_not_depend_on_the_time_of_day(hours_later):
    """The daily job runs at the hour 30-90 minutes before the build: a volume whose newest
    backup failed or hangs was last backed up a day ago, inside the job's 24 h plus the
    alert's 2 h of grace, at any time of day; overdue ones days ago."""
    now = NOW + hours_later * 3600
    spec = ClusterSpec(
        "backups",
        volumes=20,
        failing_backups=2,
        stuck_backups=1,
        overdue_backups=1,
        recovered_backups=2,
        never_backed_up_volumes=2,
    )
    items = build_cluster(spec, now=now).items
    (job,) = [j for j in items["recurringjobs"] if j["spec"]["task"] == "backup"]
    assert job["spec"]["groups"] == ["default"]
    minute, hour = (int(f) for f in job["spec"]["cron"].split()[:2])
    backups: dict[str, list[dict]] = {}
    for b in items["backups"]:
        backups.setdefault(b["status"]["volumeName"], []).append(b)
    seen = Counter()
    for name, volume in _by_name(items["volumes"]).items():
        if name not in backups:  # never backed up, though the default group's job applies
            assert volume["metadata"]["labels"]["recurring-job-group.longhorn.io/default"]
            assert now - _epoch(volume["metadata"]["creationTimestamp"]) > 26 * 3600
            seen["never"] += 1
            continue
        states = {b["status"]["state"] for b in backups[name]}
        last_done = max(
            _epoch(b["status"]["backupCreatedAt"])
            for b in backups[name]
            if b["status"]["state"] == "Completed"
        )
        assert now - last_done > 0
        seen[_age_bucket(now - last_done)] += 1
        failures = [
            _epoch(b["metadata"]["creationTimestamp"])
            for b in backups[name]
            if b["status"]["state"] == "Error"
        ]
        if failures:
            seen[
                "failed, nothing since" if max(failures) > last_done else "failed, done since"
            ] += 1
        if "InProgress" not in states and now - last_done < 2 * 86400:
            newest = max(_epoch(b["status"]["snapshotCreatedAt"]) for b in backups[name])
            assert (time.gmtime(newest).tm_hour, minute) == (hour, 0)
            assert newest % 3600 < 125 and 1800 < now - newest < 5400 + 125
    assert seen == {
        "hours": 14,
        "a day": 3,  # the failing and the stuck ones
        "days": 1,
        "never": 2,
        "failed, nothing since": 2,
        "failed, done since": 2,
    }


def test_hostile_names_reach_volumes_pvcs_and_nodes():
    items = build_cluster(ClusterSpec("hostile", volumes=8, hostile_names=True), now=NOW).items
    text = json.dumps(items, ensure_ascii=False)
    for needle in ('\\"', "\\\\", "\\n", "<script>alert(1)</script>", "卷"):
        assert needle in text
    pvcs = [v["status"]["kubernetesStatus"]["pvcName"] for v in items["volumes"]]
    assert any("<script>" in p for p in pvcs)
    assert any("\n" in n["metadata"]["name"] for n in items["nodes"])


def test_big_cluster_builds_and_serialises_in_seconds():
    spec = ClusterSpec(
        "big",
        volumes=2000,
        snapshots_per_volume=20,
        backups_per_volume=10,
        nodes=40,
        disks_per_node=2,
    )
    started = time.perf_counter()
    objects = build_cluster(spec, now=NOW)
    store = ClusterStore(objects)
    elapsed = time.perf_counter() - started
    assert store.count("snapshots") == 40_000 and store.count("backups") == 20_000
    assert store.count("replicas") == 6000
    assert elapsed < 8, f"building took {elapsed:.1f}s"
    page = store.page("snapshots", 500, 500, accept_gzip=True)
    assert page is store.page("snapshots", 500, 500, accept_gzip=True)  # cached bytes
    assert page.gzipped and len(page.body) < len(store.page("snapshots", 500, 500).body) / 4


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="cluster name"):
        ClusterSpec("Bad_Name")
    with pytest.raises(ValueError, match=r"cover \d+ volumes"):
        ClusterSpec("x", volumes=3, degraded_volumes=2, faulted_volumes=2)
    with pytest.raises(ValueError, match="unknown fault"):
        ClusterSpec("x", faults={"volumes": "explode"})
    with pytest.raises(ValueError, match="longhorn_version"):
        ClusterSpec("x", longhorn_version="latest")
    with pytest.raises(ValueError, match="fraction"):
        ClusterSpec("x", degraded_volumes=1.5)
    with pytest.raises(ValueError, match="nodes must be an int"):
        ClusterSpec("x", nodes="3")
    with pytest.raises(ValueError, match="unknown resource 'widgets'"):
        SimulatedFleet([ClusterSpec("x", faults={"widgets": 503})])
    with pytest.raises(ValueError, match="duplicate cluster names: x"):
        SimulatedFleet([ClusterSpec("x"), ClusterSpec("x")])
    assert ClusterSpec("x", volumes=10, degraded_volumes=0.25).count("degraded_volumes") == 2


def test_stock_fleets_have_the_promised_shape():
    demo = demo_fleet()
    assert len(demo) == 51 and len({s.name for s in demo}) == 51
    assert all(re.match(r"^[a-z]+-[a-z]+-[a-z]+-\d\d$", s.name) for s in demo)
    sizes = sorted(s.volumes for s in demo)
    assert sizes[len(sizes) // 2] <= 60 and sizes[-1] >= 200
    assert sum(s.unreachable for s in demo) == 1
    assert sum(s.faults.get("snapshots") == "403" for s in demo) == 1
    assert sum(not s.backup_target_available for s in demo) == 1
    assert sum(s.nodes_down for s in demo) == 1
    assert any(s.faulted_volumes for s in demo) and any(s.failing_backups for s in demo)
    assert any(s.auth == "cert" for s in demo) and any(s.hostile_names for s in demo)
    sized = sized_fleet()
    assert len(sized) == 51 and max(s.volumes for s in sized) >= 2000
    assert {
        (s.replicas_per_volume, s.snapshots_per_volume, s.backups_per_volume) for s in sized
    } == {(3, 20, 10)}
    small = small_fleet()
    assert len(small) == 500 and len({s.name for s in small}) == 500
    assert demo_fleet(seed=5) != demo_fleet(seed=6) and demo_fleet(seed=5) == demo_fleet(seed=5)


# -- the server ------------------------------------------------------------------------------

SPECS = [
    ClusterSpec("alpha", volumes=12, snapshots_per_volume=4, seed=1),
    ClusterSpec("beta", volumes=4, auth="cert", seed=2),
    ClusterSpec("gamma", volumes=4, unreachable=True, seed=3),
    ClusterSpec("big", volumes=150, seed=4),
]
FAST_FAULTS = FaultSettings(
    drip_bytes=32, drip_interval=0.01, oversized_bytes=4 * MiB, hang_seconds=20
)


@pytest.fixture
async def sim():
    async with SimulatedFleet(SPECS, now=NOW, fault_settings=FAST_FAULTS) as fleet:
        yield fleet


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


class Api:
    """Requests to one simulated cluster, authenticated like the exporter would be."""

    def __init__(self, sim: SimulatedFleet, session: aiohttp.ClientSession, name: str):
        self.sim, self.session, self.name = sim, session, name
        self.ssl = sim.client_ssl_context(name)
        self.headers = {"Authorization": f"Bearer {sim.token_for(name)}"}

    def url(self, plural: str) -> str:
        return self.sim.url_for(self.name) + LIST_PATH + plural

    def get(self, plural: str, **kw: Any):
        kw.setdefault("headers", self.headers)
        return self.session.get(self.url(plural), ssl=self.ssl, **kw)

    async def json(self, plural: str, **kw: Any) -> tuple[int, dict]:
        async with self.get(plural, **kw) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_tls_uses_the_generated_ca_and_the_default_store_rejects_it(sim, session):
    url = sim.url_for("alpha") + LIST_PATH + "volumes"
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await session.get(url, ssl=ssl.create_default_context())
    token = {"Authorization": f"Bearer {sim.token_for('alpha')}"}
    ctx = sim.client_ssl_context()
    for host_url in (url, url.replace("127.0.0.1", "localhost")):
        async with session.get(host_url, ssl=ctx, headers=token) as resp:
            assert resp.status == 200
    async with session.get(
        url, ssl=ctx, headers=token, server_hostname="kubernetes.default.svc"
    ) as resp:
        assert resp.status == 200


async def test_tokens_are_per_cluster_and_rotate(sim, session, tmp_path):
    alpha = Api(sim, session, "alpha")
    status, body = await alpha.json("volumes", headers={})
    assert status == 401
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    wrong = {"Authorization": f"Bearer {sim.token_for('big')}"}
    assert (await alpha.json("volumes", headers=wrong))[0] == 401
    assert (await alpha.json("volumes"))[0] == 200
    paths = sim.write_kubeconfigs(tmp_path)
    old = sim.token_for("alpha")
    sim.rotate_token("alpha")
    assert sim.token_for("alpha") != old
    assert (await alpha.json("volumes"))[0] == 401
    rewritten = yaml.safe_load(paths["alpha"].read_text())
    assert rewritten["users"][0]["user"]["token"] == sim.token_for("alpha")
    assert (await Api(sim, session, "alpha").json("volumes"))[0] == 200


async def test_client_certificates_authenticate_only_their_own_cluster(sim, session):
    beta_ctx = sim.client_ssl_context("beta")
    beta_url = sim.url_for("beta") + LIST_PATH + "nodes"
    async with session.get(beta_url, ssl=beta_ctx) as resp:
        assert resp.status == 200
        assert len((await resp.json())["items"]) == 3
    async with session.get(sim.url_for("alpha") + LIST_PATH + "nodes", ssl=beta_ctx) as resp:
        assert resp.status == 401
    async with session.get(beta_url, ssl=sim.client_ssl_context()) as resp:
        assert resp.status == 401


@pytest.mark.parametrize("limit", [1, 7, 48, 500])
async def test_pages_return_every_item_exactly_once(sim, session, limit):
    alpha = Api(sim, session, "alpha")
    status, whole = await alpha.json("snapshots")
    assert status == 200 and "continue" not in whole["metadata"]
    expected = [o["metadata"]["name"] for o in whole["items"]]
    assert len(expected) == 48
    seen, token, pages = [], "", 0
    while pages < 100:
        params = {"limit": str(limit)} | ({"continue": token} if token else {})
        status, page = await alpha.json("snapshots", params=params)
        assert status == 200 and page["kind"] == "SnapshotList"
        assert page["apiVersion"] == "longhorn.io/v1beta2"
        assert page["metadata"]["resourceVersion"] == whole["metadata"]["resourceVersion"]
        seen += [o["metadata"]["name"] for o in page["items"]]
        pages += 1
        token = page["metadata"].get("continue", "")
        if not token:
            assert "remainingItemCount" not in page["metadata"]
            break
        assert page["metadata"]["remainingItemCount"] == len(expected) - len(seen)
    assert seen == expected
    assert pages == -(-48 // limit)
    assert sim.lists("alpha", "snapshots") == 2 and sim.requests("alpha", "snapshots") == pages + 1


async def test_big_pages_are_gzipped_like_kube_apiserver(sim, session):
    big = Api(sim, session, "big")
    async with big.get("volumes") as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        compressed = int(resp.headers["Content-Length"])
        gz_items = (await resp.json())["items"]
    plain_headers = big.headers | {"Accept-Encoding": "identity"}
    async with big.get("volumes", headers=plain_headers) as resp:
        assert "Content-Encoding" not in resp.headers
        body = await resp.read()
    assert json.loads(body)["items"] == gz_items and len(gz_items) == 150
    assert compressed < len(body) / 4
    async with big.get("settings") as resp:  # small bodies stay plain
        assert "Content-Encoding" not in resp.headers


async def test_lists_paths_and_errors_look_like_kube_apiserver(sim, session):
    alpha = Api(sim, session, "alpha")
    base = sim.url_for("alpha")
    other_ns = base + "/apis/longhorn.io/v1beta2/namespaces/default/volumes"
    async with session.get(other_ns, ssl=alpha.ssl, headers=alpha.headers) as resp:
        assert (await resp.json())["items"] == []
    all_ns = base + "/apis/longhorn.io/v1beta2/volumes"
    async with session.get(all_ns, ssl=alpha.ssl, headers=alpha.headers) as resp:
        assert len((await resp.json())["items"]) == 12
        assert resp.headers["Audit-Id"]
    status, body = await alpha.json("widgets")
    assert status == 404 and body["reason"] == "NotFound" and body["kind"] == "Status"
    status, body = await alpha.json("volumes", params={"continue": "not-a-token"})
    assert status == 400 and body["reason"] == "BadRequest"
    status, body = await alpha.json("volumes", params={"limit": "ten"})
    assert status == 400
    async with session.get(base + "/version", ssl=alpha.ssl, headers=alpha.headers) as resp:
        assert (await resp.json())["major"] == "1"
    discovery = base + "/apis/longhorn.io/v1beta2"
    async with session.get(discovery, ssl=alpha.ssl, headers=alpha.headers) as resp:
        names = {r["name"] for r in (await resp.json())["resources"]}
        assert names == set(KINDS)


async def test_a_changed_cluster_keeps_the_previous_generations_pages(sim, session):
    alpha = Api(sim, session, "alpha")
    status, first = await alpha.json("volumes", params={"limit": "5"})
    token = first["metadata"]["continue"]
    await sim.update_cluster("alpha", degraded_volumes=3)
    status, rest = await alpha.json("volumes", params={"limit": "100", "continue": token})
    assert status == 200 and len(rest["items"]) == 7
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    status, fresh = await alpha.json("volumes")
    assert int(fresh["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    robustness = Counter(v["status"]["robustness"] for v in fresh["items"])
    assert robustness["degraded"] == sim.summary("alpha")["volumes_degraded"] >= 3
    await sim.update_cluster("alpha", degraded_volumes=1)
    status, body = await alpha.json("volumes", params={"continue": token})
    assert status == 410 and body["reason"] == "Expired"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "NotFound"),
        (429, "TooManyRequests"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
    ],
)
async def test_http_faults_answer_with_status_json(sim, session, code, reason):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", code, resource="snapshots")
    async with alpha.get("snapshots") as resp:
        body = await resp.json()
        assert resp.status == code and body["reason"] == reason and body["code"] == code
        if code == 429:
            assert resp.headers["Retry-After"] == "1"
        if code == 403:
            assert 'cannot list resource "snapshots"' in body["message"]
    assert (await alpha.json("volumes"))[0] == 200  # other resources unaffected
    sim.clear_faults("alpha")
    assert (await alpha.json("snapshots"))[0] == 200


async def test_timeout_fault_never_answers_and_frees_the_handler(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "timeout")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with alpha.get("volumes", timeout=aiohttp.ClientTimeout(total=0.3)) as resp:
            await resp.read()
    assert 0.29 < time.monotonic() - started < 3
    await _eventually(lambda: sim.cluster("alpha").in_flight == 0)
    assert sim.requests("alpha", "volumes") == 1


async def test_slow_drip_defeats_read_timeouts_but_not_a_deadline(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "slow_drip", resource="volumes")
    timeout = aiohttp.ClientTimeout(total=0.5, sock_read=0.2)
    announced, got = [], []

    async def read_slowly() -> None:
        async with alpha.get("volumes", timeout=timeout) as resp:
            announced.append(int(resp.headers["Content-Length"]))
            async for chunk in resp.content.iter_any():
                got.append(len(chunk))

    with pytest.raises(TimeoutError):
        await read_slowly()
    assert 0 < sum(got) < announced[0]
    sim.set_fault("alpha", "slow_drip", resource="backuptargets")
    async with alpha.get("backuptargets") as resp:  # small body: it does arrive, slowly
        assert len((await resp.json())["items"]) == 1


async def test_truncated_invalid_and_html_bodies(sim, session):
    alpha = Api(sim, session, "alpha")
    for fault in ("truncated", "invalid_json"):
        sim.set_fault("alpha", fault)
        async with alpha.get("volumes") as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            body = await resp.read()
            assert len(body) == int(resp.headers["Content-Length"])
            with pytest.raises(ValueError):
                json.loads(body)
    sim.set_fault("alpha", "wrong_content_type")
    async with alpha.get("volumes") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "<html>" in await resp.text()


async def test_oversized_body_streams_without_length_until_the_client_stops(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "oversized", resource="volumes")
    got = 0
    async with alpha.get("volumes") as resp:
        assert "Content-Length" not in resp.headers
        async for chunk in resp.content.iter_chunked(64 * 1024):
            got += len(chunk)
            if got > MiB:
                break  # a capped client gives up here
    assert got > MiB
    async with alpha.get("volumes") as resp:  # read to the end: valid, and huge
        body = await resp.read()
    assert len(body) >= FAST_FAULTS.oversized_bytes
    assert json.loads(body)["kind"] == "VolumeList"


async def test_gzip_bomb_is_small_on_the_wire_and_huge_inflated(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "gzip_bomb", resource="volumes")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(alpha.url("volumes"), ssl=alpha.ssl, headers=alpha.headers) as resp,
    ):
        wire = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
    assert len(wire) < FAST_FAULTS.oversized_bytes / 50
    inflated = zlib.decompress(wire, 31)
    assert len(inflated) >= FAST_FAULTS.oversized_bytes and json.loads(inflated)["items"]


async def test_reset_drops_the_connection_mid_body(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "reset", resource="volumes")
    statuses = []

    async def read_all() -> None:
        async with alpha.get("volumes") as resp:
            statuses.append(resp.status)
            await resp.read()

    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        await read_all()
    assert statuses == [200]
    assert (await alpha.json("nodes"))[0] == 200  # the server itself is fine


async def test_endless_and_expired_continue(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "endless_continue", resource="volumes")
    tokens, token = set(), ""
    for _ in range(25):
        params = {"limit": "5"} | ({"continue": token} if token else {})
        status, page = await alpha.json("volumes", params=params)
        assert status == 200 and page["items"]
        token = page["metadata"]["continue"]
        tokens.add(token)
    assert len(tokens) == 25  # a new token every page, forever
    sim.clear_faults("alpha")
    sim.set_fault("alpha", "expired_continue")
    status, first = await alpha.json("volumes", params={"limit": "5"})
    assert status == 200
    status, body = await alpha.json(
        "volumes", params={"limit": "5", "continue": first["metadata"]["continue"]}
    )
    assert status == 410 and body["reason"] == "Expired" and body["code"] == 410


async def test_latency_and_request_accounting(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_latency("alpha", 0.2)
    started = time.monotonic()
    results = await asyncio.gather(*(alpha.json("volumes") for _ in range(20)))
    elapsed = time.monotonic() - started
    assert all(status == 200 for status, _ in results)
    assert 0.2 <= elapsed < 2  # concurrent, not serial
    assert sim.requests("alpha", "volumes") == 20 and sim.requests("alpha") == 20
    assert sim.max_in_flight("alpha") == 20
    assert sim.requests("big") == 0
    await alpha.json("nodes", headers={})  # rejected requests still count
    assert sim.requests("alpha", "nodes") == 1
    sim.reset_counts("alpha")
    assert sim.requests("alpha") == 0 and sim.lists("alpha") == 0


async def test_serving_rate_delays_each_page_by_its_json_size(sim, session):
    """The modelled API server: round trip + JSON bytes / rate, per request, concurrently."""
    alpha = Api(sim, session, "alpha")
    status, body = await alpha.json("snapshots")
    assert status == 200
    size = len(json.dumps(body, separators=(",", ":")))
    rate = size / 0.3  # this page takes 0.3 s to "encode"
    sim.set_latency("alpha", 0.05, bytes_per_second=rate)
    started = time.monotonic()
    results = await asyncio.gather(*(alpha.json("snapshots") for _ in range(5)))
    elapsed = time.monotonic() - started
    assert all(s == 200 for s, _ in results)
    assert 0.33 <= elapsed < 0.9  # 0.05 + 0.3 each, concurrent
    started = time.monotonic()
    assert (await alpha.json("backuptargets"))[0] == 200  # a tiny page: the round trip only
    assert time.monotonic() - started < 0.2
    with pytest.raises(ValueError, match="bytes_per_second"):
        sim.set_latency("alpha", 0.0, bytes_per_second=-1)
    sim.set_latency("alpha", 0.0)
    assert sim.cluster("alpha").bytes_per_second == 0.0


async def test_gzip_faults_are_well_framed_but_unusable(sim, session):
    alpha = Api(sim, session, "alpha")
    sim.set_fault("alpha", "truncated_gzip", resource="volumes")
    async with alpha.get("volumes", auto_decompress=False) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = await resp.read()
    inflater = zlib.decompressobj(wbits=31)
    inflater.decompress(raw)
    assert not inflater.eof  # the stream stops half way
    sim.set_fault("alpha", "unknown_encoding", resource="volumes")
    async with alpha.get("volumes", auto_decompress=False) as resp:
        assert resp.headers["Content-Encoding"] == "br"
        assert json.loads(await resp.read())["kind"] == "VolumeList"  # not brotli at all


async def test_unreachable_cluster_refuses_connections(sim, session):
    url = sim.url_for("gamma")
    assert f":{sim.port}/" not in url
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(url + LIST_PATH + "volumes", ssl=sim.client_ssl_context())
    assert sim.requests("gamma") == 0


async def test_many_concurrent_requests_across_clusters(session):
    specs = [ClusterSpec(f"c{i:02d}", volumes=20, seed=i) for i in range(20)]
    async with SimulatedFleet(specs, now=NOW) as fleet:
        apis = [Api(fleet, session, s.name) for s in specs]
        started = time.monotonic()
        results = await asyncio.gather(
            *(api.json(plural) for api in apis for plural in ("volumes", "replicas", "engines"))
        )
        assert all(status == 200 for status, _ in results) and len(results) == 60
        assert time.monotonic() - started < 10


async def test_control_endpoint_drives_faults_and_reads_counts(sim, session):
    ctrl = sim.base_url + "/_sim/clusters"
    ctx = sim.client_ssl_context()
    alpha = Api(sim, session, "alpha")
    async with session.put(
        f"{ctrl}/alpha/faults", ssl=ctx, json={"fault": "503", "resource": "volumes"}
    ) as resp:
        assert resp.status == 200 and (await resp.json())["faults"] == {"volumes": "503"}
    assert (await alpha.json("volumes"))[0] == 503
    async with session.get(f"{ctrl}/alpha", ssl=ctx) as resp:
        text = await resp.text()
        state = json.loads(text)
    assert state["requests"] == {"volumes": 1} and state["lists"] == {"volumes": 1}
    assert sim.token_for("alpha") not in text
    async with session.delete(f"{ctrl}/alpha/faults", ssl=ctx) as resp:
        assert (await resp.json())["faults"] == {}
    assert (await alpha.json("volumes"))[0] == 200
    async with session.put(f"{ctrl}/alpha/latency", ssl=ctx, json={"seconds": 0.05}) as resp:
        assert (await resp.json())["latency_seconds"] == 0.05
    async with session.put(f"{ctrl}/alpha/faults", ssl=ctx, json={"fault": "boom"}) as resp:
        assert resp.status == 400 and "unknown fault" in (await resp.json())["error"]
    async with session.put(f"{ctrl}/nope/faults", ssl=ctx, json={"fault": "503"}) as resp:
        assert resp.status == 404
    async with session.patch(f"{ctrl}/alpha/spec", ssl=ctx, json={"faulted_volumes": 1}) as resp:
        assert resp.status == 200 and (await resp.json())["summary"]["volumes_faulted"] == 1
    async with session.patch(f"{ctrl}/alpha/spec", ssl=ctx, json={"no_such": 1}) as resp:
        assert resp.status == 400
    old = sim.token_for("alpha")
    async with session.post(f"{ctrl}/alpha/rotate-token", ssl=ctx) as resp:
        assert resp.status == 200 and old not in await resp.text()
    assert sim.token_for("alpha") != old
    async with session.post(sim.base_url + "/_sim/reset-counts", ssl=ctx, json={}) as resp:
        assert resp.status == 200
    assert sim.requests("alpha") == 0
    async with session.get(ctrl, ssl=ctx) as resp:
        assert [c["name"] for c in (await resp.json())["clusters"]] == sim.names()


async def test_kubeconfigs_are_private_and_work(sim, session, tmp_path):
    from kubernetes.client import Configuration
    from kubernetes.config.kube_config import KubeConfigLoader

    paths = sim.write_kubeconfigs(tmp_path / "kc")
    assert set(paths) == set(sim.names())
    assert stat.S_IMODE(os.stat(tmp_path / "kc").st_mode) == 0o700
    for name, path in paths.items():
        assert path.name == f"{name}.yaml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        config = yaml.safe_load(path.read_text())
        assert config["clusters"][0]["cluster"]["server"] == sim.url_for(name)
        user = config["users"][0]["user"]
        assert ("client-certificate-data" in user) == (name == "beta")
        cfg = Configuration()
        KubeConfigLoader(config).load_and_set(cfg)
        assert cfg.host == sim.url_for(name)
    # A token kubeconfig's own CA and token get a list.
    config = yaml.safe_load(paths["alpha"].read_text())
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    token = config["users"][0]["user"]["token"]
    async with session.get(
        config["clusters"][0]["cluster"]["server"] + LIST_PATH + "volumes",
        ssl=ssl.create_default_context(cadata=ca),
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200


async def test_cli_prints_ready_serves_and_exits_zero_on_sigterm(tmp_path):
    kc = tmp_path / "kc"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator",
        "--kubeconfig-dir",
        str(kc),
        "--fleet",
        "small500",
        "--clusters",
        "3",
        "--seed",
        "9",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        match = re.fullmatch(rb"READY (\d+)\n", line)
        assert match, line
        port = int(match.group(1))
        (path,) = [p for p in kc.glob("*.yaml")][:1]
        assert len(list(kc.glob("*.yaml"))) == 3
        config = yaml.safe_load(path.read_text())
        server = config["clusters"][0]["cluster"]["server"]
        assert f":{port}/clusters/" in server
        ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
        headers = {"Authorization": f"Bearer {config['users'][0]['user']['token']}"}
        async with (
            aiohttp.ClientSession() as client,
            client.get(
                server + LIST_PATH + "volumes",
                ssl=ssl.create_default_context(cadata=ca.decode()),
                headers=headers,
            ) as resp,
        ):
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        assert rest == b""  # exactly one line on stdout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _eventually(predicate, timeout: float = 5.0) -> None:
    """Wait for `predicate()` to hold, polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
