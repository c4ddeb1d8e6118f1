"""Longhorn v1beta2 objects for one simulated cluster, shaped like kube-apiserver returns them.

Shapes and encodings follow the real CRDs and examples in shared/longhorn/ (see
shared/reference/longhorn.md 1.5-4): sizes are decimal strings where Longhorn's Go types say
`json:",string"` and integers where they are plain int64, Backup sizes are strings that may be
"", Longhorn's own timestamps are RFC3339 with second precision and "" for never, conditions
are lists with "True"/"False", the engine's replica modes live in `status.replicaModeMap` and
its rebuild progress in `status.rebuildStatus` keyed by `tcp://ip:port`.

Everything is derived from `ClusterSpec.seed` and the cluster name, so the same spec and `now`
give byte-identical objects. Building is a single pass over plain dicts: a 2,000-volume
cluster with 3 replicas, 20 snapshots and 10 backups per volume takes a few seconds.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .fleet import BACKUP_KNOBS, STATE_KNOBS, ClusterSpec

API_VERSION = "longhorn.io/v1beta2"
GiB = 1024**3
DAY = 86400

# Resource plural -> kind, for every list the simulator serves.
KINDS: dict[str, str] = {
    "volumes": "Volume",
    "replicas": "Replica",
    "engines": "Engine",
    "snapshots": "Snapshot",
    "backups": "Backup",
    "backupvolumes": "BackupVolume",
    "backuptargets": "BackupTarget",
    "nodes": "Node",
    "recurringjobs": "RecurringJob",
    "settings": "Setting",
    "instancemanagers": "InstanceManager",
    "engineimages": "EngineImage",
}

# Names that break naive label escaping, HTML rendering and line-based parsing.
HOSTILE_NAMES = (
    'pvc-"quoted"',
    "pvc-back\\slash",
    "pvc-new\nline",
    "pvc-<script>alert(1)</script>",
    "pvc-ünïcødé-卷-🚀",
)
HOSTILE_NODE = 'node-"evil"\\\n<script>alert(1)</script>-ñ'

_APPS = (
    ("databases", "data-postgres-{i}"),
    ("databases", "redis-data-redis-master-{i}"),
    ("databases", "datadir-mysql-{i}"),
    ("monitoring", "prometheus-k8s-db-prometheus-k8s-{i}"),
    ("monitoring", "storage-loki-{i}"),
    ("logging", "elasticsearch-data-es-default-{i}"),
    ("apps", "uploads-web-{i}"),
    ("apps", "cache-worker-{i}"),
    ("ci", "gitlab-runner-cache-{i}"),
    ("messaging", "data-kafka-{i}"),
)
_SIZES_GIB = (1, 2, 5, 8, 10, 10, 20, 20, 50, 100, 200, 500)
_NODE_CONDITIONS = (
    "Ready",
    "Schedulable",
    "MountPropagation",
    "RequiredPackages",
    "Multipathd",
    "KernelModulesLoaded",
    "NFSClientInstalled",
)


@dataclass
class ClusterObjects:
    """The objects of one cluster, per resource plural, each list sorted by name as etcd
    returns them. `malformed` names the deliberately broken objects as (plural, name), and
    `summary` holds the exact health counts the objects encode, for tests to compare with."""

    items: dict[str, list[dict[str, Any]]]
    resource_version: int
    malformed: list[tuple[str, str]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def ts(epoch: float) -> str:
    """Longhorn's own timestamp format: RFC3339, UTC, second precision.

    Formats the time of day by hand on a cached date: a big cluster needs ~10**5 of these.
    """
    day, rest = divmod(int(epoch), DAY)
    hours, rest = divmod(rest, 3600)
    return f"{_date(day)}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


@functools.lru_cache(maxsize=4096)
def _date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * DAY))


def _condition(
    ctype: str, status: bool, when: float, reason: str = "", message: str = ""
) -> dict[str, str]:
    return {
        "lastProbeTime": "",
        "lastTransitionTime": ts(when),
        "message": message,
        "reason": reason,
        "status": "True" if status else "False",
        "type": ctype,
    }


@dataclass
class _Disk:
    name: str
    uuid: str
    path: str
    maximum: int
    reserved: int
    pressure: bool = False
    scheduled: dict[str, int] = field(default_factory=dict)


@dataclass
class _Node:
    name: str
    ip: str
    down: bool
    disks: list[_Disk]
    im_name: str
    next_port: int = 10000
    engines: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)

    def port(self) -> int:
        """Allocate a port range the way an instance manager does (15 ports per process)."""
        port = self.next_port
        self.next_port += 15
        return port


class _Builder:
    """One pass over a ClusterSpec. Kept as a class so the many small object builders share
    the random generator, clock, resource-version counter and node table."""

    def __init__(self, spec: ClusterSpec, now: float) -> None:
        self.spec = spec
        self.now = now
        self.rng = random.Random(f"{spec.seed}:{spec.name}")
        self.version = spec.version
        self.ver = (
            spec.longhorn_version
            if spec.longhorn_version.startswith("v")
            else ("v" + spec.longhorn_version)
        )
        self.engine_image = f"longhornio/longhorn-engine:{self.ver}"
        self.im_image = f"longhornio/longhorn-instance-manager:{self.ver}"
        self.ns = spec.namespace
        self.rv = self.rng.randint(100_000, 50_000_000)
        # Old enough that every volume predates its oldest backup, even an overdue one.
        self.installed = now - (self.rng.uniform(60, 400) + spec.backups_per_volume) * DAY
        self.items: dict[str, list[dict[str, Any]]] = {plural: [] for plural in KINDS}
        self.malformed: list[tuple[str, str]] = []
        self.target = "default"
        self.bucket = f"s3://{spec.name}-longhorn-backups@{self.rng.choice(_S3_REGIONS)}/"
        # The backup controller re-synced the target at this time: backups finished before
        # it carry it as their creationTimestamp ("synced from the target").
        # Placed inside the backup history, so older backups show it and newer ones do not.
        history = max(1.5, spec.backups_per_volume - 0.5)
        self.synced_at = now - self.rng.uniform(1.2, history) * DAY
        # The daily backup job's newest run: the full hour 30-90 minutes before `now` (its
        # cron names that hour), so how old a backup is does not depend on the time of day.
        self.backup_run = (now - 1800) // 3600 * 3600
        self.summary: dict[str, Any] = {}

    # -- helpers -------------------------------------------------------------------------

    def hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def uuid(self) -> str:
        """A random (version 4 shaped) UUID string from the seeded generator."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def at_least(self, *version: int) -> bool:
        return self.version >= version

    def meta(
        self,
        name: str,
        created: float,
        labels: dict[str, str] | None = None,
        owner: tuple[str, str, str] | None = None,
        finalizers: bool = True,
        uid: str | None = None,
    ) -> dict[str, Any]:
        self.rv += 1
        meta: dict[str, Any] = {
            "creationTimestamp": ts(created),
            "generation": self.rng.randint(1, 6),
            "name": name,
            "namespace": self.ns,
            "resourceVersion": str(self.rv),
            "uid": uid or self.uuid(),
        }
        if finalizers:
            meta["finalizers"] = ["longhorn.io"]
        if labels is not None:
            meta["labels"] = labels
        if owner is not None:
            kind, owner_name, owner_uid = owner
            meta["ownerReferences"] = [
                {"apiVersion": API_VERSION, "kind": kind, "name": owner_name, "uid": owner_uid}
            ]
        return meta

    def add(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj_full = {"apiVersion": API_VERSION, "kind": KINDS[plural], **obj}
        self.items[plural].append(obj_full)
        return obj_full

    # -- the cluster ---------------------------------------------------------------------

    def build(self) -> ClusterObjects:
        spec = self.spec
        self.nodes = self.make_nodes()
        plan = self.plan_volumes()
        for i in range(spec.volumes):
            self.volume_bundle(i, plan[i])
        for node in self.nodes:
            self.node_object(node)
            self.instance_manager(node)
        self.cluster_objects()
        if spec.malformed:
            self.add_malformed()
        for objs in self.items.values():
            objs.sort(key=_sort_name)
        self.summary.update(self.count_summary())
        return ClusterObjects(
            items=self.items,
            resource_version=self.rv + 1,
            malformed=self.malformed,
            summary=self.summary,
        )

    def make_nodes(self) -> list[_Node]:
        spec = self.spec
        down = set(self.rng.sample(range(spec.nodes), spec.nodes_down))
        all_disks = [(n, d) for n in range(spec.nodes) for d in range(spec.disks_per_node)]
        # Prefer healthy nodes for pressured disks so the two problems stay distinguishable.
        all_disks.sort(key=lambda nd: nd[0] in down)
        pressured = set(all_disks[: spec.disks_under_pressure])
        nodes = []
        for n in range(spec.nodes):
            name = f"{spec.name}-node-{n + 1:02d}"
            if spec.hostile_names and n == spec.nodes - 1:
                name = HOSTILE_NODE
            disks = []
            for d in range(spec.disks_per_node):
                maximum = self.rng.choice((500, 1000, 2000, 4000)) * GiB
                default = d == 0
                disks.append(
                    _Disk(
                        name=f"default-disk-{self.hex(12)}" if default else f"nvme-{d}",
                        uuid=self.uuid(),
                        path="/var/lib/longhorn/" if default else f"/mnt/nvme{d}",
                        maximum=maximum,
                        reserved=int(maximum * 0.3) if default else 0,
                        pressure=(n, d) in pressured,
                    )
                )
            nodes.append(
                _Node(
                    name=name,
                    ip=f"10.42.{n}.{self.rng.randint(2, 250)}",
                    down=n in down,
                    disks=disks,
                    im_name="instance-manager-"
                    + hashlib.md5(
                        f"{name}{self.im_image}".encode(), usedforsecurity=False
                    ).hexdigest(),
                )
            )
        return nodes

    def plan_volumes(self) -> list[dict[str, Any]]:
        """Give each volume its health and backup situation, on disjoint shuffled sets."""
        spec = self.spec
        plan: list[dict[str, Any]] = [
            {"state": "healthy", "backup": "normal", "tms": False, "ro": False, "full": False}
            for _ in range(spec.volumes)
        ]
        order = list(range(spec.volumes))
        for group, key in ((STATE_KNOBS, "state"), (BACKUP_KNOBS, "backup")):
            self.rng.shuffle(order)
            pos = 0
            for knob, situation in group.items():
                for i in order[pos : pos + spec.count(knob)]:
                    plan[i][key] = situation
                pos += spec.count(knob)
        self.rng.shuffle(order)
        for i in order[: spec.count("too_many_snapshots_volumes")]:
            plan[i]["tms"] = True
        if spec.hostile_names:
            for i, name in zip(order[-len(HOSTILE_NAMES) :], HOSTILE_NAMES, strict=False):
                plan[i]["name"] = name
        # Drawn only when asked for, so clusters without these knobs stay as they were.
        if spec.count("read_only_volumes") or spec.count("near_capacity_volumes"):
            self.rng.shuffle(order)
            healthy = [i for i in order if plan[i]["state"] == "healthy"]
            for i in healthy[: spec.count("read_only_volumes")]:
                plan[i]["ro"] = True
            # From the other end, so the two sets overlap only when they must.
            for i in order[len(order) - spec.count("near_capacity_volumes") :]:
                plan[i]["full"] = True
        return plan

    # -- one volume and everything that belongs to it ------------------------------------

    def volume_bundle(self, index: int, plan: dict[str, Any]) -> None:
        rng = self.rng
        spec = self.spec
        name = plan.get("name") or f"pvc-{self.uuid()}"
        state = plan["state"]
        size = rng.choice(_SIZES_GIB) * GiB
        youngest = self.now - (spec.backups_per_volume + 12) * DAY
        created = self.installed + rng.uniform(0, youngest - self.installed)
        vol_uid = self.uuid()
        namespace, pattern = rng.choice(_APPS)
        if "name" in plan:
            pvc, namespace = plan["name"].replace("pvc-", "claim-", 1), plan["name"][4:]
        elif index % 23 == 22:
            pvc, namespace = "", ""  # created in the Longhorn UI, no PVC
        else:
            pvc = pattern.format(i=index)

        up_nodes = [n for n in self.nodes if not n.down] or self.nodes
        attached = state in ("healthy", "degraded", "unscheduled", "unscheduled_extra")
        attach_node = rng.choice(up_nodes)
        owner = attach_node.name if attached else rng.choice(up_nodes).name

        count = spec.replicas_per_volume
        placed = (
            rng.sample(self.nodes, count)
            if count <= len(self.nodes)
            else [rng.choice(self.nodes) for _ in range(count)]
        )
        # Replica roles: RW healthy, ERR failed, WO rebuilding, UNSCHED never scheduled.
        roles = ["RW"] * count
        if state == "degraded":  # on a node that is up: a rebuild cannot run on a down one
            k = next((k for k, node in enumerate(placed) if not node.down), 0)
            roles[k] = "WO" if index % 2 else "ERR"
        elif state == "unscheduled":
            roles[0] = "UNSCHED"
        elif state == "faulted":
            roles = ["ERR"] * count
        elif state == "detached_failed":
            roles[0] = "ERR"
        # Replica auto-balance asked for one more replica, which found no room.
        auto_balance = state == "unscheduled_extra"
        if auto_balance:
            roles.append("UNSCHED")
            placed.append(rng.choice(self.nodes))
        if attached:
            for k, node in enumerate(placed):
                if node.down and roles[k] in ("RW", "WO"):
                    roles[k] = "ERR"
            if "ERR" in roles and state == "healthy":
                state = "degraded"
            elif "ERR" in roles and state == "unscheduled_extra":
                state = "unscheduled"  # fewer RW than wanted and one not placed
            if roles.count("ERR") == count:
                state, attached = "faulted", False

        engine_name = f"{name}-e-0"
        engine_port = attach_node.port() if attached else 0
        low, high = (0.93, 1.08) if plan["full"] else (0.05, 0.9)
        actual = int(size * rng.uniform(low, high))
        read_only = plan["ro"] and attached
        replicas = [
            (self.replica(name, vol_uid, size, engine_name, node, role, attached, created), role)
            for node, role in zip(placed, roles, strict=True)
        ]
        snapshots = self.snapshots(name, created, actual)
        self.engine(
            name,
            vol_uid,
            size,
            engine_name,
            attach_node,
            engine_port,
            replicas,
            snapshots,
            attached,
            created,
            read_only,
        )
        last_backup = self.backups(name, size, actual, created, plan["backup"], owner, snapshots)
        self.volume(
            name=name,
            uid=vol_uid,
            size=size,
            actual=actual,
            created=created,
            state=state,
            attached=attached,
            node=attach_node.name if attached else "",
            owner=owner,
            pvc=pvc,
            namespace=namespace,
            tms=plan["tms"],
            snapshot_count=len(snapshots),
            last_backup=last_backup,
            auto_balance=auto_balance,
        )
        self.summary_volume(state, plan, roles, last_backup, read_only)

    def replica(
        self,
        volume: str,
        vol_uid: str,
        size: int,
        engine: str,
        node: _Node,
        role: str,
        attached: bool,
        created: float,
    ) -> dict[str, Any]:
        rng = self.rng
        name = f"{volume}-r-{self.hex(8)}"
        scheduled = role != "UNSCHED"
        disk = rng.choice(node.disks)
        healthy_at = ts(created + rng.uniform(5, 60))
        failed_at = ts(self.now - rng.uniform(600, DAY)) if role == "ERR" else ""
        running = attached and role in ("RW", "WO")
        # Its node went down under it: the instance manager is unknown, so is the replica.
        lost = attached and role == "ERR" and node.down
        port = node.port() if running else 0
        if scheduled:
            disk.scheduled[name] = size
            node.replicas.append(name)
        if role == "ERR":
            current_state = ("unknown" if lost else "error") if attached else "stopped"
        else:
            current_state = "running" if running else "stopped"
        spec: dict[str, Any] = {
            "active": True,
            "backingImage": "",
            "dataDirectoryName": f"{volume}-{self.hex(8)}" if scheduled else "",
            "dataEngine": "v1",
            "desireState": "running" if attached and role != "ERR" else "stopped",
            "diskID": disk.uuid if scheduled else "",
            "diskPath": disk.path if scheduled else "",
            "engineName": engine,
            "evictionRequested": False,
            "failedAt": failed_at,
            "hardNodeAffinity": "",
            "healthyAt": "" if role in ("WO", "UNSCHED") else healthy_at,
            "image": self.engine_image,
            "logRequested": False,
            "migrationEngineName": "",
            "nodeID": node.name if scheduled else "",
            "rebuildRetryCount": 1 if role == "WO" else 0,
            "revisionCounterDisabled": True,
            "salvageRequested": False,
            "snapshotMaxCount": 250,
            "snapshotMaxSize": "0",
            "unmapMarkDiskChainRemovedEnabled": False,
            "volumeName": volume,
            "volumeSize": str(size),
        }
        if self.at_least(1, 7):
            spec["lastFailedAt"] = failed_at
            spec["lastHealthyAt"] = healthy_at if role != "UNSCHED" else ""
        status: dict[str, Any] = {
            "conditions": [
                _condition("InstanceCreation", scheduled, created + 1),
                _condition("FilesystemReadOnly", False, created + 1),
                _condition("WaitForBackingImage", False, created + 1),
            ],
            "currentImage": self.engine_image if running else "",
            "currentState": current_state,
            "instanceManagerName": node.im_name if running or lost else "",
            "ip": node.ip if running else "",
            "logFetched": False,
            "ownerID": node.name if scheduled else "",
            "port": port,
            "salvageExecuted": False,
            "started": running or lost,
            "starting": False,
            "storageIP": node.ip if running else "",
            "uuid": self.uuid(),
        }
        labels = {
            "longhorn.io/backing-image": "",
            "longhornnode": node.name if scheduled else "",
            "longhornvolume": volume,
        }
        if scheduled:
            labels["longhorndiskuuid"] = disk.uuid
        return self.add(
            "replicas",
            {
                "metadata": self.meta(name, created, labels, ("Volume", volume, vol_uid)),
                "spec": spec,
                "status": status,
            },
        )

    def snapshots(self, volume: str, created: float, actual: int) -> list[dict[str, Any]]:
        """The volume's snapshot chain, oldest first: mostly hourly recurring snapshots,
        some user-created, some system ones from rebuilds, a few marked removed."""
        rng = self.rng
        count = self.spec.snapshots_per_volume
        out: list[dict[str, Any]] = []
        parent = ""
        start = max(created + 60, self.now - count * 3600 - rng.uniform(0, 3600))
        names = [self.uuid() for _ in range(count)]
        for k in range(count):
            when = start + k * 3600 + rng.uniform(0, 300)
            kind = rng.random()
            user = kind < 0.85
            removed = 0.05 < kind < 0.12 and k < count - 1
            labels = {"RecurringJob": "snapshot-hourly"} if kind < 0.7 else {}
            child = names[k + 1] if k + 1 < count else "volume-head"
            size = int(actual * rng.uniform(0.001, 0.08))
            obj = self.add(
                "snapshots",
                {
                    "metadata": self.meta(names[k], when, {"longhornvolume": volume}),
                    "spec": {"createSnapshot": user, "labels": None, "volume": volume},
                    "status": {
                        "checksum": "",
                        "children": {child: True},
                        "creationTime": ts(when),
                        "error": "",
                        "labels": labels,
                        "markRemoved": removed,
                        "ownerID": "",
                        "parent": parent,
                        "readyToUse": not removed,
                        "restoreSize": actual,
                        "size": size,
                        "userCreated": user,
                    },
                },
            )
            out.append(obj)
            parent = names[k]
        return out

    def engine(
        self,
        volume: str,
        vol_uid: str,
        size: int,
        name: str,
        node: _Node,
        port: int,
        replicas: list[tuple[dict[str, Any], str]],
        snapshots: list[dict[str, Any]],
        attached: bool,
        created: float,
        read_only: bool = False,
    ) -> None:
        """The volume's engine; `replicas` pairs each Replica with its role (RW, WO, ERR,
        UNSCHED), from which the mode map, addresses and rebuild status follow. `read_only`:
        the filesystem on it was remounted read-only (condition FilesystemReadOnly True,
        with no reason or message, as longhorn-manager's instance handler sets it)."""
        rng = self.rng
        address_map: dict[str, str] = {}
        mode_map: dict[str, str] = {}
        transition: dict[str, str] = {}
        rebuild: dict[str, Any] = {}
        for r, role in replicas:
            rname = r["metadata"]["name"]
            rstatus = r["status"]
            if role == "UNSCHED":
                continue
            if attached and rstatus["ip"]:
                address_map[rname] = f"{rstatus['ip']}:{rstatus['port']}"
            if attached and role in ("RW", "WO", "ERR"):
                mode_map[rname] = role
                transition[rname] = ts(self.now - rng.uniform(60, DAY))
            elif not attached and role == "ERR":
                mode_map[rname] = "ERR"  # a faulted volume's stale map
        if attached:
            sources = [a for n, a in address_map.items() if mode_map.get(n) == "RW"]
            for rname, mode in mode_map.items():
                if mode == "WO":
                    src = sources[0] if sources else ""
                    rebuild[f"tcp://{address_map[rname]}"] = {
                        "appliedRebuildingMBps": 0,
                        "error": "",
                        "fromReplicaAddress": f"tcp://{src}" if src else "",
                        "fromReplicaAddressList": [f"tcp://{src}"] if src else [],
                        "isRebuilding": True,
                        "progress": rng.randint(3, 97),
                        "state": "in_progress",
                    }
        snap_map = None
        if attached:
            snap_map = {}
            for s in snapshots:
                st = s["status"]
                sname = s["metadata"]["name"]
                snap_map[sname] = {
                    "children": st["children"],
                    "created": st["creationTime"],
                    "labels": st["labels"],
                    "name": sname,
                    "parent": st["parent"],
                    "removed": st["markRemoved"],
                    "size": str(st["size"]),
                    "usercreated": st["userCreated"],
                }
            snap_map["volume-head"] = {
                "children": {},
                "created": snapshots[-1]["status"]["creationTime"] if snapshots else ts(created),
                "labels": {},
                "name": "volume-head",
                "parent": snapshots[-1]["metadata"]["name"] if snapshots else "",
                "removed": False,
                "size": str(rng.randint(0, 512) * 1024 * 1024),
                "usercreated": False,
            }
        if attached:
            node.engines.append(name)
        status: dict[str, Any] = {
            "backupStatus": None,
            "cloneStatus": None,
            "conditions": [
                _condition("InstanceCreation", True, created + 1),
                _condition(
                    "FilesystemReadOnly",
                    read_only,
                    self.now - rng.uniform(600, 7200) if read_only else created + 1,
                ),
            ],
            "currentImage": self.engine_image if attached else "",
            "currentReplicaAddressMap": address_map if attached else None,
            "currentSize": str(size),
            "currentState": "running" if attached else "stopped",
            "endpoint": f"/dev/longhorn/{volume}" if attached else "",
            "instanceManagerName": node.im_name if attached else "",
            "ip": node.ip if attached else "",
            "isExpanding": False,
            "lastExpansionError": "",
            "lastExpansionFailedAt": "",
            "lastRestoredBackup": "",
            "logFetched": False,
            "ownerID": node.name,
            "port": port,
            "purgeStatus": None,
            "rebuildStatus": rebuild if attached else None,
            "replicaModeMap": mode_map,
            "restoreStatus": None,
            "salvageExecuted": False,
            "snapshots": snap_map,
            "snapshotsError": "",
            "started": attached,
            "starting": False,
            "storageIP": node.ip if attached else "",
        }
        if self.at_least(1, 7):
            status["replicaTransitionTimeMap"] = transition
        self.add(
            "engines",
            {
                "metadata": self.meta(
                    name,
                    created,
                    {"longhornnode": node.name if attached else "", "longhornvolume": volume},
                    ("Volume", volume, vol_uid),
                ),
                "spec": {
                    "active": True,
                    "backupVolume": "",
                    "dataEngine": "v1",
                    "desireState": "running" if attached else "stopped",
                    "disableFrontend": False,
                    "frontend": "blockdev",
                    "image": self.engine_image,
                    "logRequested": False,
                    "nodeID": node.name if attached else "",
                    "replicaAddressMap": address_map,
                    "requestedBackupRestore": "",
                    "requestedDataSource": "",
                    "revisionCounterDisabled": True,
                    "salvageRequested": False,
                    "snapshotMaxCount": 250,
                    "snapshotMaxSize": "0",
                    "unmapMarkSnapChainRemovedEnabled": False,
                    "upgradedReplicaAddressMap": {},
                    "volumeName": volume,
                    "volumeSize": str(size),
                },
                "status": status,
            },
        )

    def backups(
        self,
        volume: str,
        size: int,
        actual: int,
        created: float,
        mode: str,
        owner: str,
        snapshots: list[dict[str, Any]],
    ) -> dict[str, Any] | None:
        """The volume's daily backups, oldest first; the newest one shows the backup `mode`
        (Error when failing, InProgress for hours when stuck, just created when pending,
        days old when overdue; when recovered, the one before it is Error).

        Returns the newest Completed backup's name and time, or None when there is none.
        """
        rng = self.rng
        count = 0 if mode == "never" else self.spec.backups_per_volume
        if mode == "recovered":
            count = max(count, 2)
        if count == 0:
            return None
        newest = self.backup_run
        if mode == "overdue":
            newest -= rng.randint(3, 9) * DAY
        last_done: dict[str, Any] | None = None
        for k in range(count):
            snap_at = newest - (count - 1 - k) * DAY + rng.uniform(0, 120)
            state = "Completed"
            if k == count - 1 and mode == "failing":
                state = "Error"
            elif k == count - 1 and mode in ("stuck", "pending"):
                state = mode
            elif k == count - 2 and mode == "recovered":
                state = "Error"
            backup = self.backup(volume, size, actual, snap_at, state, owner, snapshots)
            if state == "Completed":
                last_done = backup
        self.backup_volume(volume, size, actual, created, owner, last_done)
        if last_done is None:
            return None
        return {
            "name": last_done["metadata"]["name"],
            "at": last_done["status"]["backupCreatedAt"],
        }

    def backup(
        self,
        volume: str,
        size: int,
        actual: int,
        snap_at: float,
        state: str,
        owner: str,
        snapshots: list[dict[str, Any]],
    ) -> dict[str, Any]:
        rng = self.rng
        name = f"backup-{self.hex(16)}"
        snap_name = snapshots[-1]["metadata"]["name"] if snapshots else self.uuid()
        cr_created = snap_at + rng.uniform(1, 5)
        uploaded = int(actual * rng.uniform(0.01, 0.3))
        error = ""
        progress = 100
        done_at = ""
        logical = str(actual)
        if state == "Completed":
            finished = cr_created + 20 + uploaded / (rng.uniform(40, 200) * 1024 * 1024)
            finished = min(finished, self.now - 60)  # the newest run's upload is over by now
            done_at = ts(finished)
            if finished < self.synced_at:
                # Pulled from the backupstore by a re-sync: created after it finished.
                cr_created = self.synced_at + rng.uniform(0, 30)
        elif state == "Error":
            progress = rng.randint(0, 90)
            logical = ""
            error = (
                "proxyServer=10.42.0.12:8501 destination=10.42.0.12:10010: failed to backup "
                "snapshot: failed to upload block: RequestError: send request failed: "
                "dial tcp: i/o timeout"
            )
        elif state == "stuck":
            state, progress, logical = "InProgress", rng.randint(5, 60), ""
            cr_created = self.now - rng.uniform(7, 20) * 3600  # past 6 h, after the last success
            snap_at = cr_created - rng.uniform(1, 5)
        else:  # pending: created a moment ago, not picked up yet
            state = rng.choice(("", "Pending"))
            progress, logical = 0, ""
            cr_created = self.now - rng.uniform(5, 50)
            snap_at = cr_created - 1
        completed = state == "Completed"
        status: dict[str, Any] = {
            "backupCreatedAt": done_at,
            "compressionMethod": "lz4",
            "error": error,
            "labels": {"RecurringJob": "backup-daily", "longhorn.io/volume-access-mode": "rwo"},
            "lastSyncedAt": ts(self.now - rng.uniform(10, 300)),
            "messages": None,
            "ownerID": owner,
            "progress": progress,
            "replicaAddress": "",
            "size": logical,
            "snapshotCreatedAt": ts(snap_at),
            "snapshotName": snap_name,
            "state": state,
            "url": f"{self.bucket}?backup={name}&volume={volume}" if completed else "",
            "volumeBackingImageName": "",
            "volumeCreated": "",
            "volumeName": volume,
            "volumeSize": str(size),
        }
        if self.at_least(1, 7):
            status["newlyUploadDataSize"] = str(uploaded) if completed else ""
            status["reUploadedDataSize"] = "0" if completed else ""
        labels = {"backup-volume": volume}
        if self.at_least(1, 8):
            status["backupTargetName"] = self.target
            labels["backup-target"] = self.target
        return self.add(
            "backups",
            {
                "metadata": self.meta(name, cr_created, labels),
                "spec": {
                    "backupMode": "incremental",
                    "labels": {"RecurringJob": "backup-daily"},
                    "snapshotName": snap_name,
                    "syncRequestedAt": None,
                },
                "status": status,
            },
        )

    def backup_volume(
        self,
        volume: str,
        size: int,
        actual: int,
        created: float,
        owner: str,
        last: dict[str, Any] | None,
    ) -> None:
        digest = hashlib.sha256(f"{volume}-{self.target}".encode()).hexdigest()[:8]
        labels = {"backup-volume": volume}
        spec: dict[str, Any] = {"syncRequestedAt": None}
        if self.at_least(1, 8):
            labels["backup-target"] = self.target
            spec["backupTargetName"] = self.target
            spec["volumeName"] = volume
        name = f"{volume}-{digest}" if self.at_least(1, 8) else volume
        self.add(
            "backupvolumes",
            {
                "metadata": self.meta(name, max(created, self.synced_at), labels),
                "spec": spec,
                "status": {
                    "backingImageChecksum": "",
                    "backingImageName": "",
                    "createdAt": ts(created + 3600),
                    "dataStored": str(-(-actual // (2 * 1024 * 1024)) * 2 * 1024 * 1024),
                    "labels": {"longhorn.io/volume-access-mode": "rwo"},
                    "lastBackupAt": last["status"]["backupCreatedAt"] if last else "",
                    "lastBackupName": last["metadata"]["name"] if last else "",
                    "lastModificationTime": ts(self.now - self.rng.uniform(60, DAY)),
                    "lastSyncedAt": ts(self.now - self.rng.uniform(10, 300)),
                    "messages": None,
                    "ownerID": owner,
                    "size": str(size),
                    "storageClassName": "longhorn",
                },
            },
        )

    def volume(
        self,
        *,
        name: str,
        uid: str,
        size: int,
        actual: int,
        created: float,
        state: str,
        attached: bool,
        node: str,
        owner: str,
        pvc: str,
        namespace: str,
        tms: bool,
        snapshot_count: int,
        last_backup: dict[str, Any] | None,
        auto_balance: bool = False,
    ) -> None:
        rng = self.rng
        since = created + 1
        unscheduled = state in ("unscheduled", "unscheduled_extra")
        max_count = max(2, snapshot_count) if tms else 250
        conditions = [
            _condition("WaitForBackingImage", False, since),
            _condition(
                "TooManySnapshots",
                tms,
                self.now - rng.uniform(600, DAY) if tms else since,
                "TooManySnapshots" if tms else "",
                f"Snapshots count is {snapshot_count} over the warning threshold "
                f"{max(1, max_count - 2)}"
                if tms
                else "",
            ),
            _condition(
                "Scheduled",
                not unscheduled,
                self.now - rng.uniform(600, 7200) if unscheduled else since,
                "ReplicaSchedulingFailure" if unscheduled else "",
                "replica scheduling failed: insufficient storage" if unscheduled else "",
            ),
            _condition("Restore", False, since),
        ]
        robustness = {
            "healthy": "healthy",
            "degraded": "degraded",
            "unscheduled": "degraded",
            "unscheduled_extra": "healthy",  # every wanted replica is RW
            "faulted": "faulted",
        }.get(state, "unknown")
        spec: dict[str, Any] = {
            "Standby": False,
            "accessMode": "rwo",
            "backingImage": "",
            "backupCompressionMethod": "lz4",
            "dataEngine": "v1",
            "dataLocality": "disabled",
            "dataSource": "",
            "disableFrontend": False,
            "diskSelector": [],
            "encrypted": False,
            "freezeFilesystemForSnapshot": "ignored",
            "fromBackup": "",
            "frontend": "blockdev",
            "image": self.engine_image,
            "lastAttachedBy": "",
            "migratable": False,
            "migrationNodeID": "",
            "nodeID": node,
            "nodeSelector": [],
            "numberOfReplicas": self.spec.replicas_per_volume,
            "replicaAutoBalance": "best-effort" if auto_balance else "ignored",
            "replicaDiskSoftAntiAffinity": "ignored",
            "replicaSoftAntiAffinity": "ignored",
            "replicaZoneSoftAntiAffinity": "ignored",
            "restoreVolumeRecurringJob": "ignored",
            "revisionCounterDisabled": True,
            "size": str(size),
            "snapshotDataIntegrity": "ignored",
            "snapshotMaxCount": max_count,
            "snapshotMaxSize": "0",
            "staleReplicaTimeout": 30,
            "unmapMarkSnapChainRemoved": "ignored",
        }
        if self.at_least(1, 8):
            spec["backupTargetName"] = self.target
        if self.at_least(1, 9):
            spec["offlineRebuilding"] = "ignored"
        if self.at_least(1, 10):
            spec["backupBlockSize"] = "2097152"
            spec["replicaRebuildingBandwidthLimit"] = 0
        degraded_at = (
            ts(self.now - rng.uniform(300, 7200)) if robustness in ("degraded", "faulted") else ""
        )
        status: dict[str, Any] = {
            "actualSize": actual,
            "cloneStatus": {
                "attemptCount": 0,
                "nextAllowedAttemptAt": "",
                "snapshot": "",
                "sourceVolume": "",
                "state": "",
            },
            "conditions": conditions,
            "currentImage": self.engine_image,
            "currentMigrationNodeID": "",
            "currentNodeID": node,
            "expansionRequired": False,
            "frontendDisabled": False,
            "isStandby": False,
            "kubernetesStatus": {
                "lastPVCRefAt": "",
                "lastPodRefAt": "" if attached or not pvc else ts(self.now - DAY),
                "namespace": namespace,
                "pvName": name if pvc else "",
                "pvStatus": "Bound" if pvc else "",
                "pvcName": pvc,
                "workloadsStatus": [
                    {
                        "podName": f"{pvc.rsplit('-', 1)[0]}-{self.hex(5)}",
                        "podStatus": "Running" if attached else "Pending",
                        "workloadName": pvc.rsplit("-", 1)[0],
                        "workloadType": "StatefulSet",
                    }
                ]
                if pvc
                else None,
            },
            "lastBackup": last_backup["name"] if last_backup else "",
            "lastBackupAt": last_backup["at"] if last_backup else "",
            "lastDegradedAt": degraded_at,
            "ownerID": owner,
            "remountRequestedAt": "",
            "restoreInitiated": False,
            "restoreRequired": False,
            "robustness": robustness,
            "shareEndpoint": "",
            "shareState": "",
            "state": "attached" if attached else "detached",
        }
        if self.at_least(1, 12):
            status["currentEngineNodeID"] = node
            status["lastAutoSalvagedAt"] = ""
            status["switchoverState"] = ""
        labels = {
            "longhornvolume": name,
            "recurring-job-group.longhorn.io/default": "enabled",
        }
        if self.at_least(1, 8):
            labels["backup-target"] = self.target
        self.add(
            "volumes",
            {
                "metadata": self.meta(name, created, labels, uid=uid),
                "spec": spec,
                "status": status,
            },
        )

    # -- nodes and cluster-wide objects --------------------------------------------------

    def node_object(self, node: _Node) -> None:
        rng = self.rng
        created = self.installed + rng.uniform(0, 3600)
        conditions = []
        for ctype in _NODE_CONDITIONS:
            if ctype == "Ready" and node.down:
                conditions.append(
                    _condition(
                        "Ready",
                        False,
                        self.now - rng.uniform(600, 7200),
                        "ManagerPodDown",
                        f"Node {node.name} is down: the manager pod longhorn-manager-"
                        f"{self.hex(5)} is not running",
                    )
                )
            else:
                conditions.append(_condition(ctype, True, created + 30))
        disks_spec: dict[str, Any] = {}
        disks_status: dict[str, Any] = {}
        for disk in node.disks:
            scheduled = sum(disk.scheduled.values())
            if disk.pressure:
                available = int(disk.maximum * rng.uniform(0.01, 0.05))
            else:
                used_frac = min(0.6, scheduled / disk.maximum * 0.5) + rng.uniform(0.02, 0.1)
                available = int(disk.maximum * (1 - used_frac))
            schedulable = not disk.pressure
            disk_label = f"Disk {disk.name}({disk.path}) on node {node.name}"
            disks_spec[disk.name] = {
                "allowScheduling": True,
                "diskDriver": "",
                "diskType": "filesystem",
                "evictionRequested": False,
                "path": disk.path,
                "storageReserved": disk.reserved,
                "tags": [],
            }
            disks_status[disk.name] = {
                "conditions": [
                    _condition("Ready", True, created + 60, "", f"{disk_label} is ready"),
                    _condition(
                        "Schedulable",
                        schedulable,
                        self.now - rng.uniform(600, 7200) if disk.pressure else created + 60,
                        "" if schedulable else "DiskPressure",
                        f"{disk_label} is schedulable"
                        if schedulable
                        else f"{disk_label} is not schedulable for more replica; "
                        f"Scheduled {scheduled}, Available {available}, "
                        f"Maximum {disk.maximum}",
                    ),
                ],
                "diskDriver": "",
                "diskName": disk.name,
                "diskPath": disk.path,
                "diskType": "filesystem",
                "diskUUID": disk.uuid,
                "filesystemType": "ext2/ext3",
                "instanceManagerName": node.im_name,
                "scheduledReplica": disk.scheduled,
                "storageAvailable": available,
                "storageMaximum": disk.maximum,
                "storageScheduled": scheduled,
            }
            if self.at_least(1, 7):
                disks_status[disk.name]["scheduledBackingImage"] = {}
        status: dict[str, Any] = {
            "autoEvicting": False,
            "conditions": conditions,
            "diskStatus": disks_status,
            "region": "",
            "snapshotCheckStatus": {},
            "zone": "",
        }
        if self.at_least(1, 12, 1):
            status["cpuPolicy"] = "none"
        self.add(
            "nodes",
            {
                "metadata": self.meta(node.name, created),
                "spec": {
                    "allowScheduling": True,
                    "disks": disks_spec,
                    "evictionRequested": False,
                    "instanceManagerCPURequest": 0,
                    "name": node.name,
                    "tags": [],
                },
                "status": status,
            },
        )

    def instance_manager(self, node: _Node) -> None:
        def processes(names: list[str], kind: str) -> dict[str, Any]:
            return {
                n: {
                    "spec": {"dataEngine": "v1", "name": n},
                    "status": {
                        "endpoint": "",
                        "errorMsg": "",
                        "listen": "",
                        "portEnd": 10014,
                        "portStart": 10000,
                        "resourceVersion": 0,
                        "state": "running",
                        "type": kind,
                    },
                }
                for n in names
            }

        created = self.installed + self.rng.uniform(0, 3600)
        status: dict[str, Any] = {
            "apiMinVersion": 1,
            "apiVersion": 6,
            "currentState": "unknown" if node.down else "running",
            "instanceEngines": processes(node.engines, "engine"),
            "instanceReplicas": processes(node.replicas, "replica"),
            "ip": "" if node.down else node.ip,
            "ownerID": node.name,
            "proxyApiMinVersion": 1,
            "proxyApiVersion": 6,
        }
        if self.at_least(1, 11):
            status["conditions"] = [
                _condition("NodeReady", not node.down, created, "Down" if node.down else "", ""),
                _condition("PodReady", not node.down, created, "Running", ""),
                _condition("SettingSynced", True, created),
            ]
        self.add(
            "instancemanagers",
            {
                "metadata": self.meta(
                    node.im_name,
                    created,
                    {
                        "longhorn.io/component": "instance-manager",
                        "longhorn.io/instance-manager-image": f"imi-{self.hex(8)}",
                        "longhorn.io/instance-manager-type": "aio",
                        "longhorn.io/managed-by": "longhorn-manager",
                        "longhorn.io/node": node.name,
                    },
                    finalizers=False,
                ),
                "spec": {
                    "dataEngine": "v1",
                    "dataEngineSpec": {"v2": {"cpuMask": ""}},
                    "image": self.im_image,
                    "nodeID": node.name,
                    "type": "aio",
                },
                "status": status,
            },
        )

    def cluster_objects(self) -> None:
        """BackupTarget, RecurringJobs, Settings and the EngineImage."""
        rng = self.rng
        spec = self.spec
        owner = self.nodes[0].name
        available = spec.backup_target_available
        synced = self.now - (rng.uniform(6, 30) * 3600 if not available else rng.uniform(5, 290))
        self.add(
            "backuptargets",
            {
                "metadata": self.meta(self.target, self.installed),
                "spec": {
                    "backupTargetURL": self.bucket,
                    "credentialSecret": "longhorn-s3-credentials",
                    "pollInterval": "5m0s",
                    "syncRequestedAt": None,
                },
                "status": {
                    "available": available,
                    "conditions": []
                    if available
                    else [
                        _condition(
                            "Unavailable",
                            True,
                            synced,
                            "Unavailable",
                            f"failed to list backup volumes in {self.bucket}: RequestError: "
                            "send request failed: dial tcp 52.95.150.10:443: i/o timeout",
                        )
                    ],
                    "lastSyncedAt": ts(synced),
                    "ownerID": owner,
                },
            },
        )
        days = int((self.now - self.installed) // DAY)
        backup_hour = int(self.backup_run % DAY) // 3600
        jobs = (
            ("backup-daily", "backup", f"0 {backup_hour} * * *", 7, 2, days),
            ("snapshot-hourly", "snapshot", "0 * * * *", 24, 5, days * 24),
            ("trim-weekly", "filesystem-trim", "0 4 * * 0", 0, 2, days // 7),
        )
        for name, task, cron, retain, concurrency, runs in jobs:
            self.add(
                "recurringjobs",
                {
                    "metadata": self.meta(name, self.installed + 600, finalizers=False),
                    "spec": {
                        "concurrency": concurrency,
                        "cron": cron,
                        "groups": ["default"],
                        "labels": {},
                        "name": name,
                        "parameters": {},
                        "retain": retain,
                        "task": task,
                    },
                    "status": {"executionCount": runs, "ownerID": owner},
                },
            )
        replica_count = str(spec.replicas_per_volume)
        settings = {
            "current-longhorn-version": self.ver,
            "latest-longhorn-version": "v1.12.1",
            "default-replica-count": (
                f'{{"v1":"{replica_count}","v2":"{replica_count}"}}'
                if self.at_least(1, 10)
                else replica_count
            ),
            "storage-over-provisioning-percentage": "100",
            "storage-minimal-available-percentage": "25",
            "storage-reserved-percentage-for-default-disk": "30",
            "snapshot-max-count": "250",
            "default-data-path": "/var/lib/longhorn/",
            "default-engine-image": self.engine_image,
            "auto-salvage": "true",
            "recurring-successful-jobs-history-limit": "1",
            "recurring-failed-jobs-history-limit": "1",
            "backup-concurrent-limit": "2",
        }
        if not self.at_least(1, 8):
            settings["backup-target"] = self.bucket
        for name, value in settings.items():
            obj: dict[str, Any] = {
                "metadata": self.meta(name, self.installed, finalizers=False),
                "value": value,
            }
            if self.at_least(1, 7):
                obj["status"] = {"applied": True}
            self.add("settings", obj)
        image_hash = hashlib.md5(self.engine_image.encode(), usedforsecurity=False).hexdigest()
        self.add(
            "engineimages",
            {
                "metadata": self.meta(
                    f"ei-{image_hash[:8]}",
                    self.installed,
                    {"longhorn.io/component": "engine-image"},
                ),
                "spec": {"image": self.engine_image},
                "status": {
                    "buildDate": ts(self.installed - 30 * DAY),
                    "cliAPIMinVersion": 3,
                    "cliAPIVersion": 9,
                    "conditions": [_condition("ready", True, self.installed + 120)],
                    "controllerAPIMinVersion": 3,
                    "controllerAPIVersion": 5,
                    "dataFormatMinVersion": 1,
                    "dataFormatVersion": 1,
                    "gitCommit": self.hex(40),
                    "incompatible": False,
                    "noRefSince": "",
                    "nodeDeploymentMap": {n.name: not n.down for n in self.nodes},
                    "ownerID": owner,
                    "refCount": spec.volumes,
                    "state": "deployed",
                    "version": self.ver,
                },
            },
        )

    def add_malformed(self) -> None:
        """Extra objects with wrong-typed fields, one bad field each, mixed into the lists
        (random names, so they sort into the middle of a page)."""
        base = self.now - DAY

        def bad(plural: str, **body: Any) -> None:
            name = f"pvc-{self.uuid()}" if plural != "nodes" else f"{self.spec.name}-bad-node"
            if plural == "backups":
                name = f"backup-{self.hex(16)}"
            self.add(plural, {"metadata": self.meta(name, base), **body})
            self.malformed.append((plural, name))

        bad("volumes", spec={"size": str(GiB)}, status={"actualSize": "abc", "state": "attached"})
        bad("volumes", spec=5, status={"state": "detached"})
        bad("volumes", spec={"size": str(GiB)}, status={"conditions": "x", "robustness": "healthy"})
        bad("replicas", spec={"volumeName": "pvc-x", "failedAt": 12}, status={})
        bad("engines", spec={"volumeName": "pvc-x"}, status={"replicaModeMap": ["RW"]})
        bad("snapshots", spec={"volume": "pvc-x"}, status={"size": "big"})
        bad("backups", spec={}, status={"state": "Completed", "progress": "half"})
        bad("nodes", spec={"disks": {}}, status={"conditions": "x"})

    # -- summary -------------------------------------------------------------------------

    def summary_volume(
        self,
        state: str,
        plan: dict[str, Any],
        roles: list[str],
        last: dict[str, Any] | None,
        read_only: bool,
    ) -> None:
        s = self.summary
        s[f"volumes_{state}"] = s.get(f"volumes_{state}", 0) + 1
        if plan["tms"]:
            s["volumes_too_many_snapshots"] = s.get("volumes_too_many_snapshots", 0) + 1
        if read_only:
            s["volumes_read_only"] = s.get("volumes_read_only", 0) + 1
        if plan["full"]:
            s["volumes_near_capacity"] = s.get("volumes_near_capacity", 0) + 1
        if last is None:
            s["volumes_without_completed_backup"] = s.get("volumes_without_completed_backup", 0) + 1
        for role in roles:
            if state in ("detached", "detached_failed") and role == "RW":
                key = "replicas_stopped"  # no running engine, so no replica mode at all
            else:
                key = _ROLE_SUMMARY[role]
            s[key] = s.get(key, 0) + 1

    def count_summary(self) -> dict[str, Any]:
        bad = {name for _, name in self.malformed}
        good = {
            p: [o for o in objs if o["metadata"]["name"] not in bad]
            for p, objs in self.items.items()
        }
        out: dict[str, Any] = {plural: len(objs) for plural, objs in good.items()}
        for state in ("", "Pending", "InProgress", "Completed", "Error"):
            out[f"backups_{state or 'new'}"] = sum(
                1 for b in good["backups"] if b["status"]["state"] == state
            )
        out["nodes_down"] = sum(1 for n in self.nodes if n.down)
        out["disks_under_pressure"] = sum(1 for n in self.nodes for d in n.disks if d.pressure)
        out["backup_target_available"] = self.spec.backup_target_available
        out["longhorn_version"] = self.ver
        for state in (*_STATES, "read_only", "near_capacity"):
            out[f"volumes_{state}"] = self.summary.get(f"volumes_{state}", 0)
        return out


# Every state a volume can end up in (`ClusterSpec`'s knobs and a down node decide).
_STATES = ("healthy", *STATE_KNOBS.values())
_ROLE_SUMMARY = {
    "RW": "replicas_healthy",
    "WO": "replicas_rebuilding",
    "ERR": "replicas_failed",
    "UNSCHED": "replicas_unscheduled",
}
_S3_REGIONS = ("us-east-1", "eu-west-1", "eu-central-1", "ap-south-1", "us-west-2")


def _sort_name(obj: dict[str, Any]) -> bytes:
    """etcd returns objects in key order, i.e. by the UTF-8 bytes of their names."""
    return obj["metadata"]["name"].encode()


def build_cluster(spec: ClusterSpec, now: float | None = None) -> ClusterObjects:
    """Build every Longhorn object of the cluster `spec` describes, with timestamps relative
    to `now` (Unix seconds; default: the current time).

    The cyclic garbage collector is paused meanwhile: a big cluster allocates millions of
    dicts, none of them in a cycle, and the collector's passes over them cost about a third
    of the build time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Builder(spec, time.time() if now is None else now).build()
    finally:
        if was_enabled:
            gc.enable()
