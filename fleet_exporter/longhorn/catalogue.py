"""The Longhorn metric catalogue (docs/metrics.md): the families of one cluster state.

Each group of lists (``JOINS``) has its families, built as soon as that group has been
joined. Lines are written straight from the records (``exposition.Writer``): each family
is one list comprehension over the volumes (or backups, nodes, ...), a step each, so a
refresh on the event loop lets other work run between families.

Two rules hold everywhere. A metric derived from a resource that did not list completely
is omitted for the whole cluster, never zeroed. A value that is absent or cannot be read
(None in the records) gives no sample; the object's other samples stay.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from operator import attrgetter

from ..exposition import Encoded, Writer
from . import Join
from .churn import SnapshotChurn
from .records import (
    BACKUP_STATES,
    NODE_REPLICA_STATES,
    ROBUSTNESS,
    VOLUME_STATES,
    ClusterState,
    Condition,
    VolumeState,
)

# The labels of every per-volume series, after ``cluster``.
VOLUME_LABELS = ("volume", "pvc", "pvc_namespace", "node")
BACKUP_LABELS = ("volume", "backup_target")
# Per-volume families with one value each: name, help, the value (None: no sample).
VOLUME_VALUES: tuple[tuple[str, str, str], ...] = (
    ("longhorn_volume_capacity_bytes", "Configured size of the volume.", "capacity"),
    (
        "longhorn_volume_actual_size_bytes",
        "Space used by each replica of the volume, snapshots included.",
        "actual_size",
    ),
)

Steps = Generator[None, None, list[Encoded]]


def building_group(join: Join, state: ClusterState, churn: SnapshotChurn, w: Writer) -> Steps:
    """The families of one group of lists, from the state that group's join returned (or
    the whole state), a step per family."""
    out: list[Encoded] = []
    if join.name == "volumes":
        yield from _volume_families(out, w, state)
        yield from _replica_families(out, w, state)
    elif join.name == "snapshots":
        yield from _snapshot_families(out, w, state, churn)
    elif join.name == "backups":
        yield from _backup_families(out, w, state)
    elif join.name == "recurringjobs":
        yield from _recurring_job_families(out, w, state)
    elif join.name == "nodes":
        yield from _node_families(out, w, state)
    elif join.name == "settings" and state.longhorn_version:
        block = w.labels(("version", state.longhorn_version))
        out.append(
            w.family(
                "longhorn_version_info",
                "gauge",
                "Longhorn version of the cluster (setting current-longhorn-version); always 1.",
                [f"longhorn_version_info{block}}} 1.0\n"],
            )
        )
    return [f for f in out if f.samples]


def volume_blocks(w: Writer, state: ClusterState) -> list[tuple[str, VolumeState]]:
    """Each volume with its open label block, made once per refresh."""
    key = ("volumes", id(state.volumes))
    blocks = w.cache.get(key)
    if blocks is None:
        blocks = w.cache[key] = [
            (
                w.labels(
                    ("volume", v.name),
                    ("pvc", v.pvc),
                    ("pvc_namespace", v.pvc_namespace),
                    ("node", v.node),
                ),
                v,
            )
            for v in state.volumes.values()
        ]
    return blocks


def _values(name: str, vols: Sequence[tuple[str, VolumeState]], get, num) -> list[str]:
    """One line per volume whose value is known."""
    return [f"{name}{b}}} {num[x]}\n" for b, v in vols if (x := get(v)) is not None]


def _volume_families(out: list[Encoded], w: Writer, state: ClusterState) -> Iterator[None]:
    vols = volume_blocks(w, state)
    num = w.num
    n = "longhorn_volume_info"
    out.append(
        w.family(
            n,
            "gauge",
            "Volume settings; always 1.",
            [
                f'{n}{b},frontend="{w.esc(v.frontend)}",data_engine="{w.esc(v.data_engine)}",'
                f'access_mode="{w.esc(v.access_mode)}",'
                f'number_of_replicas="{_text(v.number_of_replicas)}",'
                f'data_locality="{w.esc(v.data_locality)}",attached_node="{w.esc(v.attached_node)}",'
                f'backup_target="{w.esc(v.backup_target)}"}} 1.0\n'
                for b, v in vols
            ],
        )
    )
    yield
    for name, help_, field in VOLUME_VALUES:
        out.append(w.family(name, "gauge", help_, _values(name, vols, attrgetter(field), num)))
    yield
    n = "longhorn_volume_state"
    states = [(s, f',state="{s}"}} ') for s in VOLUME_STATES]
    out.append(
        w.family(
            n,
            "gauge",
            "Volume state, one-hot: 1 for the current state.",
            [
                f"{n}{b}{label}{'1.0' if v.state == s else '0.0'}\n"
                for b, v in vols
                for s, label in states
            ],
        )
    )
    yield
    n = "longhorn_volume_robustness"
    states = [(r, f',state="{r}"}} ') for r in ROBUSTNESS]
    out.append(
        w.family(
            n,
            "gauge",
            "Volume robustness, one-hot: 1 for the current one (unrecognised values: unknown).",
            [
                f"{n}{b}{label}{'1.0' if v.robustness == r else '0.0'}\n"
                for b, v in vols
                for r, label in states
            ],
        )
    )
    yield
    n = "longhorn_volume_healthy"
    out.append(
        w.family(
            n,
            "gauge",
            "1 when the volume needs nothing: robustness healthy and every replica scheduled, "
            "or detached with enough scheduled, non-failed replicas.",
            [
                f"{n}{b}}} {'1.0' if v.healthy else '0.0'}\n"
                for b, v in vols
                if v.healthy is not None
            ],
        )
    )
    n = "longhorn_volume_condition"
    out.append(
        w.family(
            n,
            "gauge",
            "Volume condition status: 1 when True. condition is the lowercased type.",
            _conditions(n, w, ((b, v.conditions) for b, v in vols)),
        )
    )
    yield
    for name, help_, field in (
        (
            "longhorn_volume_last_backup_at",
            "Volume status.lastBackupAt in Unix seconds; 0 when never backed up.",
            "last_backup_at",
        ),
        (
            "longhorn_volume_created_timestamp_seconds",
            "The volume's metadata.creationTimestamp.",
            "created",
        ),
        (
            "longhorn_volume_replicas_desired",
            "Replicas the volume should have (spec.numberOfReplicas).",
            "number_of_replicas",
        ),
    ):
        out.append(w.family(name, "gauge", help_, _values(name, vols, attrgetter(field), num)))
    yield
    if state.has("engines"):
        n = "longhorn_volume_file_system_read_only"
        out.append(
            w.family(
                n,
                "gauge",
                "1 when the active engine reports condition FilesystemReadOnly True.",
                [f"{n}{b}}} {'1.0' if v.read_only else '0.0'}\n" for b, v in vols],
            )
        )
        n = "longhorn_volume_rebuild_progress_ratio"
        out.append(
            w.family(
                n,
                "gauge",
                "Progress of the least advanced replica rebuild (0..1); only while rebuilding.",
                _values(n, vols, attrgetter("rebuild_progress"), num),
            )
        )
        yield


def _replica_families(out: list[Encoded], w: Writer, state: ClusterState) -> Iterator[None]:
    if not state.has("replicas"):
        return
    vols = volume_blocks(w, state)
    num = w.num
    families = [
        ("longhorn_volume_replicas", "Active Replica objects of the volume.", "replicas"),
        (
            "longhorn_volume_replicas_unscheduled",
            "Active replicas not scheduled to a node (spec.nodeID empty) and not failed.",
            "replicas_unscheduled",
        ),
    ]
    if state.has("engines"):
        families += [
            (
                "longhorn_volume_replicas_healthy",
                "Active replicas in mode RW in the active engine and not failed.",
                "replicas_healthy",
            ),
            (
                "longhorn_volume_replicas_rebuilding",
                "Active replicas in mode WO (rebuilding) in the active engine.",
                "replicas_rebuilding",
            ),
            (
                "longhorn_volume_replicas_failed",
                "Active replicas in mode ERR, or with spec.failedAt set.",
                "replicas_failed",
            ),
        ]
    for name, help_, field in families:
        out.append(w.family(name, "gauge", help_, _values(name, vols, attrgetter(field), num)))
    yield
    if state.has("volumes", "engines", "nodes"):
        n = "longhorn_node_replicas"
        lines = []
        for node in state.nodes:
            counts = state.node_replicas.get(node, {})
            block = w.labels(("node", node))
            lines += [
                f'{n}{block},state="{s}"}} {num[float(counts.get(s, 0))]}\n'
                for s in NODE_REPLICA_STATES
            ]
        out.append(
            w.family(
                n,
                "gauge",
                "Active replicas on the node by state: healthy (RW), rebuilding (WO), failed "
                "(ERR or failedAt), stopped (no mode: the volume is not attached).",
                lines,
            )
        )


def _snapshot_families(
    out: list[Encoded], w: Writer, state: ClusterState, churn: SnapshotChurn
) -> Iterator[None]:
    if not state.has("snapshots"):
        return
    vols = [(b, v, v.snapshots) for b, v in volume_blocks(w, state) if v.snapshots is not None]
    num = w.num
    for name, help_, field in (
        (
            "longhorn_volume_snapshots",
            "Snapshots of the volume, excluding volume-head and removed ones.",
            "count",
        ),
        (
            "longhorn_volume_snapshots_size_bytes",
            "Sum of status.size of the counted snapshots.",
            "size_bytes",
        ),
        (
            "longhorn_volume_snapshot_oldest_timestamp_seconds",
            "creationTime of the oldest counted snapshot.",
            "oldest",
        ),
        (
            "longhorn_volume_snapshot_newest_timestamp_seconds",
            "creationTime of the newest counted snapshot.",
            "newest",
        ),
    ):
        get = attrgetter(field)
        out.append(
            w.family(
                name,
                "gauge",
                help_,
                [f"{name}{b}}} {num[x]}\n" for b, _, s in vols if (x := get(s)) is not None],
            )
        )
        yield
    for name, help_, counts in (
        (
            "longhorn_volume_snapshots_created_total",
            "Snapshots that appeared between refreshes since the exporter started.",
            churn.created,
        ),
        (
            "longhorn_volume_snapshots_removed_total",
            "Snapshots that disappeared or were marked removed between refreshes since the "
            "exporter started.",
            churn.removed,
        ),
    ):
        out.append(
            w.family(
                name,
                "counter",
                help_,
                [
                    f"{name}{b}}} {num[float(counts[v.name])]}\n"
                    for b, v, _ in vols
                    if v.name in counts
                ],
            )
        )
    yield


def _backup_families(out: list[Encoded], w: Writer, state: ClusterState) -> Iterator[None]:
    num = w.num
    if state.has("backups"):
        n = "longhorn_volume_last_backup_timestamp_seconds"
        out.append(
            w.family(
                n,
                "gauge",
                "backupCreatedAt of the volume's newest Completed backup on any target; 0 when "
                "there is none.",
                [
                    f"{n}{b}}} {num[v.backup_last_success or 0.0]}\n"
                    for b, v in volume_blocks(w, state)
                    if v.backup_last_success is not None or not v.backup_time_unknown
                ],
            )
        )
        yield
        pairs = [
            (w.labels(("volume", volume), ("backup_target", target)), stats)
            for (volume, target), stats in state.backups.items()
        ]
        n = "longhorn_backup_last_success_timestamp_seconds"
        out.append(
            w.family(
                n,
                "gauge",
                "backupCreatedAt (upload finished) of the newest Completed backup; 0 when none.",
                [
                    f"{n}{b}}} {num[s.last_success or 0.0]}\n"
                    for b, s in pairs
                    if s.last_success is not None or not s.completed_unknown
                ],
            )
        )
        for name, help_, field in (
            (
                "longhorn_backup_last_latency_seconds",
                "backupCreatedAt minus creationTimestamp of the newest Completed backup created "
                "in this cluster (synced backups have no latency here).",
                "last_latency",
            ),
            (
                "longhorn_backup_last_size_bytes",
                "status.size (logical size) of the newest Completed backup.",
                "last_size",
            ),
            (
                "longhorn_backup_last_uploaded_bytes",
                "status.newlyUploadDataSize of the newest Completed backup.",
                "last_uploaded",
            ),
            (
                "longhorn_backup_in_progress_oldest_start_timestamp_seconds",
                "creationTimestamp of the oldest backup still New, Pending or InProgress.",
                "oldest_in_progress",
            ),
            (
                "longhorn_backup_last_failure_timestamp_seconds",
                "creationTimestamp of the newest backup in state Error.",
                "last_failure",
            ),
        ):
            get = attrgetter(field)
            out.append(
                w.family(
                    name,
                    "gauge",
                    help_,
                    [f"{name}{b}}} {num[x]}\n" for b, s in pairs if (x := get(s)) is not None],
                )
            )
        yield
        n = "longhorn_backups"
        states = [(st, f',state="{st}"}} ') for st in BACKUP_STATES]
        out.append(
            w.family(
                n,
                "gauge",
                "Backup objects by state.",
                [
                    f"{n}{b}{label}{num[float(s.counts[st])]}\n"
                    for b, s in pairs
                    for st, label in states
                ],
            )
        )
        yield
    if state.has("backupvolumes"):
        n = "longhorn_backup_volume_last_backup_timestamp_seconds"
        out.append(
            w.family(
                n,
                "gauge",
                "BackupVolume status.lastBackupAt: the newest backup in the backup store, as "
                "last synced; 0 when none.",
                [
                    f"{n}{w.labels(('volume', volume), ('backup_target', target))}}} "
                    f"{num[bv.last_backup_at]}\n"
                    for (volume, target), bv in state.backup_volumes.items()
                    if bv.last_backup_at is not None
                ],
            )
        )
    if state.has("backuptargets"):
        targets = [
            (w.labels(("backup_target", name)), t) for name, t in state.backup_targets.items()
        ]
        n = "longhorn_backup_target_available"
        out.append(
            w.family(
                n,
                "gauge",
                "BackupTarget status.available: 1 when Longhorn can reach the target.",
                [
                    f"{n}{b}}} {'1.0' if t.available else '0.0'}\n"
                    for b, t in targets
                    if t.available is not None
                ],
            )
        )
        n = "longhorn_backup_target_last_synced_timestamp_seconds"
        out.append(
            w.family(
                n,
                "gauge",
                "BackupTarget status.lastSyncedAt; 0 when never synced.",
                [
                    f"{n}{b}}} {num[t.last_synced]}\n"
                    for b, t in targets
                    if t.last_synced is not None
                ],
            )
        )
    yield


def _recurring_job_families(out: list[Encoded], w: Writer, state: ClusterState) -> Iterator[None]:
    if not state.has("recurringjobs"):
        return
    num = w.num
    jobs = [(w.labels(("recurring_job", name)), j) for name, j in state.recurring_jobs.items()]
    n = "longhorn_recurring_job_info"
    out.append(
        w.family(
            n,
            "gauge",
            "Recurring job settings; always 1. groups is comma-separated, sorted.",
            [
                f'{n}{b},task="{w.esc(j.task)}",groups="{w.esc(",".join(j.groups))}",'
                f'cron="{w.esc(j.cron)}",retain="{_text(j.retain)}",'
                f'concurrency="{_text(j.concurrency)}"}} 1.0\n'
                for b, j in jobs
            ],
        )
    )
    n = "longhorn_recurring_job_executions_total"
    out.append(
        w.family(
            n,
            "counter",
            "Times the job was triggered (status.executionCount).",
            [f"{n}{b}}} {num[j.executions]}\n" for b, j in jobs if j.executions is not None],
        )
    )
    yield
    if state.has("volumes"):
        n = "longhorn_volume_backup_interval_seconds"
        out.append(
            w.family(
                n,
                "gauge",
                "Shortest interval between runs among the backup recurring jobs that apply to "
                "the volume (a job's interval: the longest gap between two of its runs).",
                _values(n, volume_blocks(w, state), attrgetter("backup_interval"), num),
            )
        )
        yield


def _node_families(out: list[Encoded], w: Writer, state: ClusterState) -> Iterator[None]:
    if not state.has("nodes"):
        return
    num = w.num
    nodes = [(w.labels(("node", name)), n) for name, n in state.nodes.items()]
    out.append(
        w.family(
            "longhorn_node_count_total",
            "gauge",
            "Longhorn nodes in the cluster (a gauge; Longhorn's name).",
            [f"longhorn_node_count_total{w.labels()}}} {num[float(len(nodes))]}\n"],
        )
    )
    n = "longhorn_node_status"
    lines = _conditions(n, w, ((b, node.conditions) for b, node in nodes))
    lines += [
        f'{n}{b},condition="allowScheduling",condition_reason=""}} '
        f"{'1.0' if node.allow_scheduling else '0.0'}\n"
        for b, node in nodes
        if node.allow_scheduling is not None
    ]
    out.append(
        w.family(
            n,
            "gauge",
            "Node condition status: 1 when True. condition is the lowercased type, plus "
            "allowScheduling from the spec.",
            lines,
        )
    )
    yield
    for what, source, get in (
        ("capacity", "storageMaximum", attrgetter("capacity")),
        ("usage", "storageMaximum - storageAvailable", attrgetter("usage")),
        ("reservation", "storageReserved", attrgetter("reserved")),
        ("scheduled", "storageScheduled", attrgetter("scheduled")),
    ):
        name = f"longhorn_node_storage_{what}_bytes"
        out.append(
            w.family(
                name,
                "gauge",
                f"Sum of the node's disk {source}; absent when a disk does not report it.",
                [
                    f"{name}{b}}} {num[x]}\n"
                    for b, node in nodes
                    if (x := _sum(map(get, node.disks))) is not None
                ],
            )
        )
    disks = [
        (w.labels(("node", name), ("disk", d.name)), d)
        for name, node in state.nodes.items()
        for d in node.disks
    ]
    for what, help_, get in (
        ("capacity", "Disk storageMaximum.", attrgetter("capacity")),
        ("usage", "Disk storageMaximum - storageAvailable.", attrgetter("usage")),
        ("reservation", "Disk storageReserved (kept free for other uses).", attrgetter("reserved")),
    ):
        name = f"longhorn_disk_{what}_bytes"
        out.append(
            w.family(
                name,
                "gauge",
                help_,
                [f"{name}{b}}} {num[x]}\n" for b, d in disks if (x := get(d)) is not None],
            )
        )
    n = "longhorn_disk_status"
    out.append(
        w.family(
            n,
            "gauge",
            "Disk condition status: 1 when True. condition is the lowercased type.",
            _conditions(n, w, ((b, d.conditions) for b, d in disks)),
        )
    )
    yield


def _conditions(
    name: str, w: Writer, objects: Iterable[tuple[str, tuple[Condition, ...]]]
) -> list[str]:
    """One line per condition of each object: 1 when True; ``condition`` lowercased, as
    Longhorn's own exporter writes it."""
    return [
        f'{name}{b},condition="{w.esc(c.type.lower())}",condition_reason="{w.esc(c.reason)}"}} '
        f"{'1.0' if c.true else '0.0'}\n"
        for b, conditions in objects
        for c in conditions
    ]


def _text(value: int | None) -> str:
    """A number as a label value; empty when unknown."""
    return "" if value is None else str(value)


def _sum(values: Iterator[float | None]) -> float | None:
    """The sum, or None when a part is unknown."""
    total = 0.0
    for x in values:
        if x is None:
            return None
        total += x
    return total
