"""The Longhorn metric catalogue (docs/metrics.md): the families of one cluster state.

Metrics derived from a resource that did not list completely are omitted, not zeroed.
The families of each group of lists (``JOINS``) are built as soon as that group has been
joined, in steps of ``STEP`` volumes or backups, so a refresh on the event loop lets other
work run in between.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from operator import attrgetter

from ..exposition import Family
from ..knobs import STEP
from . import Join
from .churn import SnapshotChurn
from .records import BACKUP_STATES, ROBUSTNESS, VOLUME_STATES, ClusterState, VolumeState

VOLUME_LABELS = ("volume", "pvc", "pvc_namespace", "node")
BACKUP_LABELS = ("volume", "backup_target")


class _Families:
    """Collects families in order; families that end up without samples are dropped."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def new(self, name: str, help_: str, labels: tuple[str, ...], kind: str = "gauge") -> Family:
        fam = Family(name, kind, help_, labels, [])
        self.families.append(fam)
        return fam

    def done(self) -> list[Family]:
        return [f for f in self.families if f.samples]


def building_group(
    join: Join, state: ClusterState, churn: SnapshotChurn
) -> Generator[None, None, list[Family]]:
    """The families of one group of lists (``longhorn.JOINS``), from the state that
    group's join returned (or the whole state), in steps like ``building_families``."""
    out = _Families()
    if join.name == "volumes":
        yield from _volume_families(out, state)
        yield from _replica_families(out, state)
    elif join.name == "snapshots":
        yield from _snapshot_families(out, state, churn)
    elif join.name == "backups":
        yield from _backup_families(out, state)
    elif join.name == "recurringjobs":
        _recurring_job_families(out, state)
    elif join.name == "nodes":
        _node_families(out, state)
    elif join.name == "settings" and state.longhorn_version:
        out.new(
            "longhorn_version_info",
            "Longhorn version of the cluster (setting current-longhorn-version); always 1.",
            ("version",),
        ).samples.append(((state.longhorn_version,), 1.0))
    return out.done()


def _vols(state: ClusterState) -> Iterator[tuple[tuple[str, str, str, str], VolumeState]]:
    for v in state.volumes.values():
        yield (v.name, v.pvc, v.pvc_namespace, v.node), v


def _volume_families(out: _Families, state: ClusterState) -> Iterator[None]:
    info = out.new(
        "longhorn_volume_info",
        "Volume settings; always 1.",
        (
            *VOLUME_LABELS,
            "frontend",
            "data_engine",
            "access_mode",
            "number_of_replicas",
            "data_locality",
            "attached_node",
            "backup_target",
        ),
    )
    capacity = out.new(
        "longhorn_volume_capacity_bytes", "Configured size of the volume.", VOLUME_LABELS
    )
    actual = out.new(
        "longhorn_volume_actual_size_bytes",
        "Space used by each replica of the volume, snapshots included.",
        VOLUME_LABELS,
    )
    vstate = out.new(
        "longhorn_volume_state",
        "Volume state, one-hot: 1 for the current state.",
        (*VOLUME_LABELS, "state"),
    )
    robust = out.new(
        "longhorn_volume_robustness",
        "Volume robustness, one-hot: 1 for the current one (unrecognised values: unknown).",
        (*VOLUME_LABELS, "state"),
    )
    healthy = out.new(
        "longhorn_volume_healthy",
        "1 when the volume needs nothing: robustness healthy and every replica scheduled, "
        "or detached with enough scheduled, non-failed replicas.",
        VOLUME_LABELS,
    )
    condition = out.new(
        "longhorn_volume_condition",
        "Volume condition status: 1 when True. condition is the lowercased type.",
        (*VOLUME_LABELS, "condition", "condition_reason"),
    )
    last_backup_at = out.new(
        "longhorn_volume_last_backup_at",
        "Volume status.lastBackupAt in Unix seconds; 0 when never backed up.",
        VOLUME_LABELS,
    )
    for i, (labels, v) in enumerate(_vols(state)):
        if i % STEP == STEP - 1:
            yield
        info.samples.append(
            (
                (
                    *labels,
                    v.frontend,
                    v.data_engine,
                    v.access_mode,
                    str(v.number_of_replicas),
                    v.data_locality,
                    v.attached_node,
                    v.backup_target,
                ),
                1.0,
            )
        )
        capacity.samples.append((labels, v.capacity))
        actual.samples.append((labels, v.actual_size))
        vstate.samples.extend(((*labels, s), float(v.state == s)) for s in VOLUME_STATES)
        robust.samples.extend(((*labels, r), float(v.robustness == r)) for r in ROBUSTNESS)
        if v.healthy is not None:
            healthy.samples.append((labels, float(v.healthy)))
        condition.samples.extend(
            ((*labels, c.type.lower(), c.reason), float(c.true)) for c in v.conditions
        )
        last_backup_at.samples.append((labels, v.last_backup_at or 0.0))
    if state.has("engines"):
        ro = out.new(
            "longhorn_volume_file_system_read_only",
            "1 when the active engine reports condition FilesystemReadOnly True.",
            VOLUME_LABELS,
        )
        ro.samples.extend((labels, float(bool(v.read_only))) for labels, v in _vols(state))


def _replica_families(out: _Families, state: ClusterState) -> Iterator[None]:
    out.new(
        "longhorn_volume_replicas_desired",
        "Replicas the volume should have (spec.numberOfReplicas).",
        VOLUME_LABELS,
    ).samples.extend((labels, float(v.number_of_replicas)) for labels, v in _vols(state))
    if state.has("engines"):
        out.new(
            "longhorn_volume_rebuild_progress_ratio",
            "Progress of the least advanced replica rebuild (0..1); only while rebuilding.",
            VOLUME_LABELS,
        ).samples.extend(
            (labels, v.rebuild_progress)
            for labels, v in _vols(state)
            if v.rebuild_progress is not None
        )
    if not state.has("replicas"):
        return
    present = out.new(
        "longhorn_volume_replicas",
        "Active Replica objects of the volume.",
        VOLUME_LABELS,
    )
    unscheduled = out.new(
        "longhorn_volume_replicas_unscheduled",
        "Active replicas not scheduled to a node (spec.nodeID empty) and not failed.",
        VOLUME_LABELS,
    )
    for i, (labels, v) in enumerate(_vols(state)):
        if i % STEP == STEP - 1:
            yield
        present.samples.append((labels, float(v.replicas or 0)))
        unscheduled.samples.append((labels, float(v.replicas_unscheduled or 0)))
    if not state.has("engines"):
        return
    per_mode = [
        ("healthy", "Active replicas in mode RW in the active engine and not failed."),
        ("rebuilding", "Active replicas in mode WO (rebuilding) in the active engine."),
        ("failed", "Active replicas in mode ERR, or with spec.failedAt set."),
    ]
    for mode, help_ in per_mode:
        fam = out.new(f"longhorn_volume_replicas_{mode}", help_, VOLUME_LABELS)
        fam.samples.extend(
            (labels, float(getattr(v, f"replicas_{mode}") or 0)) for labels, v in _vols(state)
        )


def _snapshot_families(out: _Families, state: ClusterState, churn: SnapshotChurn) -> Iterator[None]:
    if not state.has("snapshots"):
        return
    count = out.new(
        "longhorn_volume_snapshots",
        "Snapshots of the volume, excluding volume-head and removed ones.",
        VOLUME_LABELS,
    )
    size = out.new(
        "longhorn_volume_snapshots_size_bytes",
        "Sum of status.size of the counted snapshots.",
        VOLUME_LABELS,
    )
    oldest = out.new(
        "longhorn_volume_snapshot_oldest_timestamp_seconds",
        "creationTime of the oldest counted snapshot.",
        VOLUME_LABELS,
    )
    newest = out.new(
        "longhorn_volume_snapshot_newest_timestamp_seconds",
        "creationTime of the newest counted snapshot.",
        VOLUME_LABELS,
    )
    created = out.new(
        "longhorn_volume_snapshots_created_total",
        "Snapshots that appeared between refreshes since the exporter started.",
        VOLUME_LABELS,
        "counter",
    )
    removed = out.new(
        "longhorn_volume_snapshots_removed_total",
        "Snapshots that disappeared or were marked removed between refreshes since the "
        "exporter started.",
        VOLUME_LABELS,
        "counter",
    )
    for i, (labels, v) in enumerate(_vols(state)):
        if i % STEP == STEP - 1:
            yield
        s = v.snapshots
        if s is None:
            continue
        count.samples.append((labels, float(s.count)))
        size.samples.append((labels, s.size_bytes))
        if s.oldest is not None:
            oldest.samples.append((labels, s.oldest))
        if s.newest is not None:
            newest.samples.append((labels, s.newest))
        if v.name in churn.created:
            created.samples.append((labels, float(churn.created[v.name])))
            removed.samples.append((labels, float(churn.removed[v.name])))


def _backup_families(out: _Families, state: ClusterState) -> Iterator[None]:
    if state.has("backups"):
        out.new(
            "longhorn_volume_last_backup_timestamp_seconds",
            "backupCreatedAt of the volume's newest Completed backup on any target; 0 when "
            "there is none.",
            VOLUME_LABELS,
        ).samples.extend((labels, v.backup_last_success or 0.0) for labels, v in _vols(state))
        success = out.new(
            "longhorn_backup_last_success_timestamp_seconds",
            "backupCreatedAt (upload finished) of the newest Completed backup; 0 when none.",
            BACKUP_LABELS,
        )
        latency = out.new(
            "longhorn_backup_last_latency_seconds",
            "backupCreatedAt minus creationTimestamp of the newest Completed backup created "
            "in this cluster (synced backups have no latency here).",
            BACKUP_LABELS,
        )
        size = out.new(
            "longhorn_backup_last_size_bytes",
            "status.size (logical size) of the newest Completed backup.",
            BACKUP_LABELS,
        )
        uploaded = out.new(
            "longhorn_backup_last_uploaded_bytes",
            "status.newlyUploadDataSize of the newest Completed backup.",
            BACKUP_LABELS,
        )
        counts = out.new(
            "longhorn_backups",
            "Backup objects by state.",
            (*BACKUP_LABELS, "state"),
        )
        in_progress = out.new(
            "longhorn_backup_in_progress_oldest_start_timestamp_seconds",
            "creationTimestamp of the oldest backup still New, Pending or InProgress.",
            BACKUP_LABELS,
        )
        for i, (key, b) in enumerate(state.backups.items()):
            if i % STEP == STEP - 1:
                yield
            success.samples.append((key, b.last_success or 0.0))
            if b.last_latency is not None:
                latency.samples.append((key, b.last_latency))
            if b.last_size is not None:
                size.samples.append((key, b.last_size))
            if b.last_uploaded is not None:
                uploaded.samples.append((key, b.last_uploaded))
            counts.samples.extend(((*key, s), float(b.counts[s])) for s in BACKUP_STATES)
            if b.oldest_in_progress is not None:
                in_progress.samples.append((key, b.oldest_in_progress))
    if state.has("backupvolumes"):
        out.new(
            "longhorn_backup_volume_last_backup_timestamp_seconds",
            "BackupVolume status.lastBackupAt: the newest backup in the backup store, as "
            "last synced; 0 when none.",
            BACKUP_LABELS,
        ).samples.extend(
            (key, bv.last_backup_at or 0.0) for key, bv in state.backup_volumes.items()
        )
    if state.has("backuptargets"):
        available = out.new(
            "longhorn_backup_target_available",
            "BackupTarget status.available: 1 when Longhorn can reach the target.",
            ("backup_target",),
        )
        synced = out.new(
            "longhorn_backup_target_last_synced_timestamp_seconds",
            "BackupTarget status.lastSyncedAt; 0 when never synced.",
            ("backup_target",),
        )
        for name, t in state.backup_targets.items():
            available.samples.append(((name,), float(t.available)))
            synced.samples.append(((name,), t.last_synced or 0.0))


def _recurring_job_families(out: _Families, state: ClusterState) -> None:
    if not state.has("recurringjobs"):
        return
    info = out.new(
        "longhorn_recurring_job_info",
        "Recurring job settings; always 1. groups is comma-separated, sorted.",
        ("recurring_job", "task", "groups", "cron", "retain", "concurrency"),
    )
    executions = out.new(
        "longhorn_recurring_job_executions_total",
        "Times the job was triggered (status.executionCount).",
        ("recurring_job",),
        "counter",
    )
    for name, j in state.recurring_jobs.items():
        info.samples.append(
            ((name, j.task, ",".join(j.groups), j.cron, str(j.retain), str(j.concurrency)), 1.0)
        )
        executions.samples.append(((name,), j.executions))


def _node_families(out: _Families, state: ClusterState) -> None:
    if not state.has("nodes"):
        return
    out.new(
        "longhorn_node_count_total",
        "Longhorn nodes in the cluster (a gauge; Longhorn's name).",
        (),
    ).samples.append(((), float(len(state.nodes))))
    status = out.new(
        "longhorn_node_status",
        "Node condition status: 1 when True. condition is the lowercased type, plus "
        "allowScheduling from the spec.",
        ("node", "condition", "condition_reason"),
    )
    node_bytes = [
        (
            out.new(
                f"longhorn_node_storage_{what}_bytes", f"Sum of the node's disk {help_}.", ("node",)
            ),
            getter,
        )
        for what, help_, getter in (
            ("capacity", "storageMaximum", attrgetter("capacity")),
            ("usage", "storageMaximum - storageAvailable", attrgetter("usage")),
            ("reservation", "storageReserved", attrgetter("reserved")),
            ("scheduled", "storageScheduled", attrgetter("scheduled")),
        )
    ]
    disk_bytes = [
        (out.new(f"longhorn_disk_{what}_bytes", help_, ("node", "disk")), getter)
        for what, help_, getter in (
            ("capacity", "Disk storageMaximum.", attrgetter("capacity")),
            ("usage", "Disk storageMaximum - storageAvailable.", attrgetter("usage")),
            (
                "reservation",
                "Disk storageReserved (kept free for other uses).",
                attrgetter("reserved"),
            ),
        )
    ]
    disk_status = out.new(
        "longhorn_disk_status",
        "Disk condition status: 1 when True. condition is the lowercased type.",
        ("node", "disk", "condition", "condition_reason"),
    )
    for name, n in state.nodes.items():
        status.samples.extend(
            ((name, c.type.lower(), c.reason), float(c.true)) for c in n.conditions
        )
        status.samples.append(((name, "allowScheduling", ""), float(n.allow_scheduling)))
        for fam, getter in node_bytes:
            fam.samples.append(((name,), float(sum(getter(d) for d in n.disks))))
        for d in n.disks:
            for fam, getter in disk_bytes:
                fam.samples.append(((name, d.name), getter(d)))
            disk_status.samples.extend(
                ((name, d.name, c.type.lower(), c.reason), float(c.true)) for c in d.conditions
            )
