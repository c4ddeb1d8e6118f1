"""What one refresh knows about a cluster: small records reduced from the wire objects,
and the ``ClusterState`` that the metrics, the pages and the CLI read.

The records are msgspec Structs with ``gc=False``: plain acyclic data, so the garbage
collector does not track them (a 2,000-volume cluster holds ~100k of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

VOLUME_STATES: tuple[str, ...] = (
    "creating",
    "attached",
    "detached",
    "attaching",
    "detaching",
    "deleting",
)
ROBUSTNESS: tuple[str, ...] = ("unknown", "healthy", "degraded", "faulted")
# Backup.status.state; "" (a backup not yet picked up) is reported as "New", as Longhorn's
# own exporter names it, and a value outside this set as "Unknown".
BACKUP_STATES: tuple[str, ...] = (
    "New",
    "Pending",
    "InProgress",
    "Completed",
    "Error",
    "Unknown",
    "Deleting",
)
BACKUP_STATE_OF = {"": "New", **{s: s for s in BACKUP_STATES}}  # raw -> constant
BACKUP_IN_PROGRESS = frozenset({"New", "Pending", "InProgress"})
DEFAULT_BACKUP_TARGET = "default"  # the only target before v1.8, and the default after
VERSION_SETTING = "current-longhorn-version"
# Settings the triage page shows; everything else is dropped at decode time.
TRIAGE_SETTINGS = frozenset(
    {
        VERSION_SETTING,
        "default-replica-count",
        "snapshot-max-count",
        "storage-over-provisioning-percentage",
        "storage-minimal-available-percentage",
        "backup-target",
    }
)
BACKUP_TASKS = frozenset({"backup", "backup-force-create"})  # recurring job tasks that back up
DEFAULT_JOB_GROUP = "default"  # applies to volumes with no recurring-job labels at all
# Replica health per node: a replica with a node and no mode in the active engine is
# "stopped" (its volume is detached, say).
NODE_REPLICA_STATES: tuple[str, ...] = ("healthy", "rebuilding", "failed", "stopped")


class _Rec(msgspec.Struct, gc=False):
    """Base of the reduced records: plain acyclic data, so the garbage collector does not
    track them. A 2,000-volume cluster holds ~100k of them; as tracked dataclasses every
    full collection walked them all, a pause of tens of ms for every probe on the loop
    (bench/README.md)."""


class Condition(_Rec, frozen=True):
    type: str
    status: str  # "True" | "False" | "Unknown", verbatim
    reason: str
    message: str

    @property
    def true(self) -> bool:
        return self.status == "True"


def condition(conds: tuple[Condition, ...], ctype: str) -> Condition | None:
    for c in conds:
        if c.type == ctype:
            return c
    return None


# --------------------------------------------------------------------------- records


class ReplicaView(_Rec):
    """One replica as the triage page shows it: ``mode`` is the active engine's view."""

    name: str
    node: str
    failed_at: str
    state: str
    active: bool
    mode: str = ""
    health: str = ""  # healthy | rebuilding | failed | unscheduled | "" (no mode: stopped)
    rebuild_progress: float | None = None


class EngineRec(_Rec):
    name: str
    node: str
    active: bool
    state: str
    modes: dict[str, str]
    addresses: dict[str, str]  # replica name -> "ip:port"
    rebuilding: dict[str, float | None]  # "ip:port" -> progress 0..1 of active rebuilds
    read_only: bool


class SnapshotStats(_Rec):
    """Snapshots of one volume, excluding ``volume-head`` and ``markRemoved`` ones.
    ``size_bytes`` is None when a counted snapshot's size is unknown: a sum with an
    unknown part is not known."""

    count: int = 0
    size_bytes: float | None = 0.0
    oldest: float | None = None
    newest: float | None = None
    removed: int = 0  # markRemoved, still in the chain (shown on the triage page)
    # hash((name, creationTime)) of each counted snapshot, for churn: a set while pages
    # arrive (duplicates are ignored), then sorted int64s as bytes (8 bytes per snapshot
    # instead of ~100 in a set, and bytes need no GC tracking, unlike an array).
    ids: set[int] | bytes = msgspec.field(default_factory=set)


class BackupStats(_Rec):
    """Backups of one (volume, backup target) pair.

    ``last_success`` is ``backupCreatedAt`` (upload finished) of the newest Completed
    backup, falling back to its ``creationTimestamp`` if the field is empty; ``last_size``
    and ``last_uploaded`` belong to that backup. ``last_latency`` is ``backupCreatedAt -
    metadata.creationTimestamp`` of the newest Completed backup *created in this cluster*
    (``creationTimestamp <= backupCreatedAt``); a backup synced from the target gets its
    Backup object at sync time, after the upload finished, so it has no latency here.
    ``newest_*`` is the newest backup in any state, ordered by ``backupCreatedAt`` or, when
    that is empty (failed and running backups), ``creationTimestamp``. ``last_failure`` is
    the ``creationTimestamp`` of the newest backup in state Error."""

    counts: dict[str, int] = msgspec.field(default_factory=lambda: dict.fromkeys(BACKUP_STATES, 0))
    last_success: float | None = None
    last_success_name: str = ""
    # A Completed backup whose times cannot be read: with no readable one, when the pair
    # last succeeded is unknown (absent), not "never" (0).
    completed_unknown: bool = False
    last_size: float | None = None
    last_uploaded: float | None = None
    last_local: float | None = None
    last_latency: float | None = None
    oldest_in_progress: float | None = None
    newest_key: tuple[float, str] | None = None
    newest_state: str = ""
    newest_error: str = ""
    last_failure: float | None = None


class BackupVolumeState(_Rec, frozen=True):
    last_backup_at: float | None
    last_backup_name: str


class BackupTargetState(_Rec, frozen=True):
    name: str
    available: bool | None
    last_synced: float | None
    poll_interval: str
    conditions: tuple[Condition, ...]


class DiskState(_Rec, frozen=True):
    """A value the node does not report, or that cannot be read, is None."""

    name: str
    path: str
    capacity: float | None
    available: float | None
    scheduled: float | None
    reserved: float | None
    conditions: tuple[Condition, ...]

    @property
    def usage(self) -> float | None:
        if self.capacity is None or self.available is None:
            return None
        return self.capacity - self.available

    @property
    def trouble(self) -> bool:
        """Not Ready or not Schedulable (a missing condition counts as trouble)."""
        return not all(
            (c := condition(self.conditions, t)) is not None and c.true
            for t in ("Ready", "Schedulable")
        )


class NodeState(_Rec, frozen=True):
    name: str
    allow_scheduling: bool | None
    conditions: tuple[Condition, ...]
    disks: tuple[DiskState, ...]

    @property
    def ready(self) -> bool:
        c = condition(self.conditions, "Ready")
        return c is not None and c.true

    @property
    def trouble(self) -> bool:
        """Any node condition not True (all node conditions are True when fine), or a
        disk in trouble."""
        return (
            any(not c.true for c in self.conditions)
            or not self.ready
            or any(d.trouble for d in self.disks)
        )


class RecurringJobState(_Rec, frozen=True):
    """A value that is absent or cannot be read is None. ``interval`` is the longest gap
    between two consecutive runs of ``cron`` (None when it cannot be read)."""

    name: str
    task: str
    groups: tuple[str, ...]
    cron: str
    retain: int | None
    concurrency: int | None
    executions: float | None
    interval: float | None


class VolumeState(_Rec):
    """One volume joined with what the other resources say about it. A field that
    depends on a resource that did not list completely is None."""

    name: str
    pvc: str
    pvc_namespace: str
    node: str  # status.ownerID, as in Longhorn's own metrics
    attached_node: str
    state: str  # verbatim
    robustness: str  # bucketed into ROBUSTNESS
    frontend: str
    data_engine: str
    access_mode: str
    data_locality: str
    backup_target: str
    number_of_replicas: int | None  # None: absent or unreadable, as every number here
    capacity: float | None
    actual_size: float | None
    created: float | None
    last_backup_at: float | None  # 0.0: never backed up ("" in the object)
    last_degraded_at: float | None
    conditions: tuple[Condition, ...]
    # recurring-job.longhorn.io/<job> and recurring-job-group.longhorn.io/<group> labels
    # set to "enabled"; None when the volume has neither kind (the "default" group applies)
    job_labels: tuple[tuple[str, ...], tuple[str, ...]] | None
    # replicas
    replicas: int | None = None
    replicas_unscheduled: int | None = None
    # replicas + engines
    replicas_healthy: int | None = None
    replicas_rebuilding: int | None = None
    replicas_failed: int | None = None
    replica_views: tuple[ReplicaView, ...] = ()
    # engines
    rebuild_progress: float | None = None  # None also when nothing is rebuilding
    read_only: bool | None = None
    # snapshots
    snapshots: SnapshotStats | None = None
    # backups: newest Completed backupCreatedAt over all targets; None = never, unless
    # ``backup_time_unknown`` (a Completed backup whose times cannot be read)
    backup_last_success: float | None = None
    backup_time_unknown: bool = False
    # recurringjobs: the shortest interval among the backup jobs that apply
    backup_interval: float | None = None
    healthy: bool | None = None


@dataclass(slots=True)
class ClusterState:
    """Everything the metrics and the triage page need from one refresh."""

    now: float
    complete: frozenset[str]
    volumes: dict[str, VolumeState]
    backups: dict[tuple[str, str], BackupStats]
    backup_volumes: dict[tuple[str, str], BackupVolumeState]
    backup_targets: dict[str, BackupTargetState]
    nodes: dict[str, NodeState]
    recurring_jobs: dict[str, RecurringJobState]
    settings: dict[str, str]
    # nodes + replicas + engines: active replicas per node, by health
    node_replicas: dict[str, dict[str, int]]

    def has(self, *resources: str) -> bool:
        return all(r in self.complete for r in resources)

    @property
    def longhorn_version(self) -> str | None:
        return self.settings.get(VERSION_SETTING) or None
