"""The health rules: what counts as a healthy replica and volume, and the summary counts
of a cluster. One definition, used by the metrics, the pages and the CLI alike.

Each count of the summary is the length (or a sum) of a list of the objects it counts,
made by one function here: the pages show the count, and the list when it is opened. Each
function says which metric or alerting rule (deploy/alerts/longhorn-fleet.rules.yml) it
matches; the pages compute at the refresh's time what the rule computes at ``time()``,
without the rule's ``for:``."""

from __future__ import annotations

from dataclasses import dataclass

from .records import (
    ROBUSTNESS,
    ClusterState,
    DiskState,
    EngineRec,
    NodeState,
    ReplicaView,
    VolumeState,
    condition,
)


def count_replicas(
    vs: VolumeState,
    replicas: dict[str, ReplicaView],
    engine: EngineRec | None,
    with_engines: bool,
) -> None:
    """Replica health as Longhorn's own API decides it (longhorn.md §3): the mode in the
    active engine's ``replicaModeMap``; ``failedAt`` set means failed whatever the map
    says; an empty ``nodeID`` means never scheduled. Only existing, active Replica objects
    count, so map entries for replicas that are gone are ignored."""
    counts = dict.fromkeys(("healthy", "rebuilding", "failed", "unscheduled"), 0)
    views = []
    for r in sorted(replicas.values(), key=lambda r: r.name):
        r.mode = engine.modes.get(r.name, "") if engine else ""
        if r.failed_at or r.mode == "ERR":
            r.health = "failed"
        elif not r.node:
            r.health = "unscheduled"
        elif r.mode == "RW":
            r.health = "healthy"
        elif r.mode == "WO":
            r.health = "rebuilding"
        if engine is not None and r.name in engine.addresses:
            r.rebuild_progress = engine.rebuilding.get(engine.addresses[r.name])
        views.append(r)
        if r.active and r.health:
            counts[r.health] += 1
    vs.replica_views = tuple(views)
    vs.replicas = sum(1 for r in views if r.active)
    vs.replicas_unscheduled = counts["unscheduled"]
    if with_engines:
        vs.replicas_healthy = counts["healthy"]
        vs.replicas_rebuilding = counts["rebuilding"]
        vs.replicas_failed = counts["failed"]


def volume_healthy(vs: VolumeState) -> bool | None:
    """1 = nothing to do. A volume is healthy when Longhorn says ``healthy`` and no
    replica failed to schedule (``Scheduled`` is not False: robustness ignores that,
    longhorn/longhorn#11916). A detached volume reads ``unknown`` (no engine runs, so
    Longhorn cannot judge); it is healthy when it has at least ``numberOfReplicas``
    active replicas that are scheduled and not failed. None when that needs the replica
    list and it did not list completely. Everything else (degraded, faulted, unknown
    while not detached, e.g. attaching) is 0."""
    scheduled = condition(vs.conditions, "Scheduled")
    if scheduled is not None and scheduled.status == "False":
        return False
    if vs.robustness == "healthy":
        return True
    if vs.robustness != "unknown" or vs.state != "detached":
        return False
    if vs.replicas is None:
        return None
    if vs.number_of_replicas is None:  # how many it should have is unknown
        return None
    usable = sum(1 for r in vs.replica_views if r.active and r.node and not r.failed_at)
    return usable >= max(vs.number_of_replicas, 1)


# LonghornBackupOverdue: a volume's backups are overdue once its backup job's interval plus
# this grace has passed since the last success; with no readable backup job, a day.
BACKUP_GRACE = 2 * 3600.0
DEFAULT_BACKUP_INTERVAL = 24 * 3600.0


@dataclass(slots=True, frozen=True)
class MissingReplicas:
    """A volume with fewer healthy replicas than desired."""

    volume: str
    healthy: int
    desired: int
    rebuilding: int

    @property
    def missing(self) -> int:
        return self.desired - self.healthy


@dataclass(slots=True, frozen=True)
class FailingBackup:
    """A (volume, backup target) pair whose newest failure is newer than the volume's
    newest completed backup on any target."""

    volume: str
    backup_target: str
    failed_at: float
    error: str  # the failed backup's error, when it is the pair's newest backup


@dataclass(slots=True, frozen=True)
class OverdueBackup:
    """A pair backed up before, whose last success is older than ``allowed`` seconds."""

    volume: str
    backup_target: str
    last_success: float
    allowed: float


@dataclass(slots=True, frozen=True)
class NeverBackedUp:
    """A volume a backup job applies to, with no completed backup on any target, older
    than ``allowed`` seconds."""

    volume: str
    backup_target: str
    created: float
    allowed: float


def volumes_unhealthy(state: ClusterState) -> list[VolumeState]:
    """``longhorn_volume_healthy == 0`` (LonghornVolumeUnhealthy and the volume alerts)."""
    return [v for v in state.volumes.values() if v.healthy is False]


def volumes_healthy(state: ClusterState) -> list[VolumeState]:
    """``longhorn_volume_healthy == 1``."""
    return [v for v in state.volumes.values() if v.healthy]


def volumes_by_robustness(state: ClusterState) -> dict[str, list[VolumeState]]:
    """``longhorn_volume_robustness{state=...} == 1``, per state."""
    out: dict[str, list[VolumeState]] = {r: [] for r in ROBUSTNESS}
    for v in state.volumes.values():
        out[v.robustness].append(v)
    return out


def replicas_missing(state: ClusterState) -> list[MissingReplicas] | None:
    """Volumes with ``longhorn_volume_replicas_healthy < longhorn_volume_replicas_desired``
    (LonghornVolumeReplicasBelowDesired's comparison), except a detached volume that is
    healthy (``longhorn_volume_healthy 1``): it runs no engine, so none of its replicas is
    RW, yet it has all the usable replicas it needs. Rebuilding replicas are still missing
    (the rule leaves them to LonghornVolumeDegraded for a while; the page says they
    rebuild). None when ``replicas`` or ``engines`` did not list."""
    if not state.has("replicas", "engines"):
        return None
    out = []
    for v in state.volumes.values():
        desired, healthy = v.number_of_replicas, v.replicas_healthy
        if desired is None or healthy is None or healthy >= desired:
            continue
        if v.state == "detached" and v.healthy:
            continue
        out.append(MissingReplicas(v.name, healthy, desired, v.replicas_rebuilding or 0))
    return out


def backups_failing(state: ClusterState) -> list[FailingBackup] | None:
    """LonghornBackupFailed: pairs whose ``longhorn_backup_last_failure_timestamp_seconds``
    is newer than the volume's ``longhorn_volume_last_backup_timestamp_seconds`` (0 when
    it has none), for existing volumes. None when ``backups`` did not list."""
    if not state.has("backups"):
        return None
    out = []
    for (volume, target), b in state.backups.items():
        v = state.volumes.get(volume)
        if v is None or b.last_failure is None:
            continue
        if b.last_failure > (v.backup_last_success or 0.0):
            error = b.newest_error if b.newest_state == "Error" else ""
            out.append(FailingBackup(volume, target, b.last_failure, error))
    return out


def backup_allowance(v: VolumeState) -> float | None:
    """How long the volume may go without a backup: its backup jobs' interval (else a day)
    plus the grace, as LonghornBackupOverdue has it. None where the rule has no threshold
    (no backup job, and no capacity sample to stand in for the default)."""
    if v.backup_interval is not None:
        return v.backup_interval + BACKUP_GRACE
    if v.capacity is None:
        return None
    return DEFAULT_BACKUP_INTERVAL + BACKUP_GRACE


def backups_overdue(state: ClusterState) -> list[OverdueBackup] | None:
    """LonghornBackupOverdue, first case: pairs with a completed backup
    (``longhorn_backup_last_success_timestamp_seconds > 0``) older than the volume's
    allowance (``backup_allowance``). None when ``backups`` did not list."""
    if not state.has("backups"):
        return None
    out = []
    for (volume, target), b in state.backups.items():
        v = state.volumes.get(volume)
        if v is None or not b.last_success:
            continue
        allowed = backup_allowance(v)
        if allowed is not None and state.now - b.last_success > allowed:
            out.append(OverdueBackup(volume, target, b.last_success, allowed))
    return out


def volumes_never_backed_up(state: ClusterState) -> list[NeverBackedUp] | None:
    """LonghornBackupOverdue, second case: volumes a backup job applies to
    (``longhorn_volume_backup_interval_seconds`` present), with no completed backup
    (``longhorn_volume_last_backup_timestamp_seconds == 0``), created longer ago than the
    interval plus the grace. A volume no backup job applies to is not expected to have
    backups. None when ``backups`` or ``recurringjobs`` did not list."""
    if not state.has("backups", "recurringjobs"):
        return None
    out = []
    for v in state.volumes.values():
        if v.backup_interval is None or v.created is None or v.backup_last_success:
            continue
        if v.backup_time_unknown:  # a backup completed, when is not known: not "never"
            continue
        allowed = v.backup_interval + BACKUP_GRACE
        if state.now - v.created > allowed:
            out.append(NeverBackedUp(v.name, v.backup_target, v.created, allowed))
    return out


def nodes_not_ready(state: ClusterState) -> list[NodeState]:
    """LonghornNodeNotReady: ``longhorn_node_status{condition="ready"} == 0``; a node
    without a Ready condition counts too (it has no such series, and is not ready)."""
    return [n for n in state.nodes.values() if not n.ready]


def disks_with_trouble(state: ClusterState) -> list[tuple[str, DiskState]]:
    """(node, disk) whose ``longhorn_disk_status`` for ``ready`` or ``schedulable`` is not
    1 (absent counts as trouble)."""
    return [(n.name, d) for n in state.nodes.values() for d in n.disks if d.trouble]


@dataclass(slots=True, frozen=True)
class ClusterSummary:
    """One line of the fleet table. A count that needs a resource that did not list
    completely is None. Each is the length (or sum) of the list of the same name above."""

    longhorn_version: str | None
    volumes: int
    volumes_healthy: int  # longhorn_volume_healthy == 1
    volumes_unhealthy: int  # longhorn_volume_healthy == 0 (unknown ones not counted)
    volumes_by_robustness: dict[str, int]
    replicas_missing: int | None  # sum of desired - healthy over replicas_missing()
    volumes_missing_replicas: int | None  # len(replicas_missing())
    backups_failing: int | None  # (volume, target) pairs: LonghornBackupFailed
    backups_overdue: int | None  # (volume, target) pairs: LonghornBackupOverdue, 1st case
    volumes_never_backed_up: int | None  # volumes: LonghornBackupOverdue, 2nd case
    nodes: int
    nodes_not_ready: int
    disks_with_trouble: int


def summarize(state: ClusterState) -> ClusterSummary:
    missing = replicas_missing(state)
    failing = backups_failing(state)
    overdue = backups_overdue(state)
    never = volumes_never_backed_up(state)
    return ClusterSummary(
        longhorn_version=state.longhorn_version,
        volumes=len(state.volumes),
        volumes_healthy=len(volumes_healthy(state)),
        volumes_unhealthy=len(volumes_unhealthy(state)),
        volumes_by_robustness={r: len(vs) for r, vs in volumes_by_robustness(state).items()},
        replicas_missing=None if missing is None else sum(m.missing for m in missing),
        volumes_missing_replicas=None if missing is None else len(missing),
        backups_failing=None if failing is None else len(failing),
        backups_overdue=None if overdue is None else len(overdue),
        volumes_never_backed_up=None if never is None else len(never),
        nodes=len(state.nodes),
        nodes_not_ready=len(nodes_not_ready(state)),
        disks_with_trouble=len(disks_with_trouble(state)),
    )
