"""The health rules: what counts as a healthy replica and volume, and the summary counts
of a cluster. One definition, used by the metrics, the pages and the CLI alike."""

from __future__ import annotations

from dataclasses import dataclass

from .records import (
    DEFAULT_OVERDUE_AFTER,
    ROBUSTNESS,
    ClusterState,
    EngineRec,
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


@dataclass(slots=True, frozen=True)
class ClusterSummary:
    """One line of the fleet table. A count that needs a resource that did not list
    completely is None."""

    longhorn_version: str | None
    volumes: int
    volumes_unhealthy: int  # longhorn_volume_healthy == 0 (unknown ones not counted)
    volumes_by_robustness: dict[str, int]
    replicas_missing: int | None  # sum of max(desired - healthy, 0)
    backups_failing: int | None  # (volume, target) pairs whose newest backup is in Error
    backups_overdue: int | None  # backed up before, but not within overdue_after
    volumes_never_backed_up: int | None  # with a backup target, no successful backup
    nodes: int
    nodes_not_ready: int
    disks_with_trouble: int


def summarize(state: ClusterState, overdue_after: float = DEFAULT_OVERDUE_AFTER) -> ClusterSummary:
    vols = state.volumes.values()
    by_robustness = dict.fromkeys(ROBUSTNESS, 0)
    for v in vols:
        by_robustness[v.robustness] += 1
    missing = None
    if state.has("replicas", "engines"):
        missing = sum(
            max(v.number_of_replicas - (v.replicas_healthy or 0), 0)
            for v in vols
            if v.number_of_replicas is not None
        )
    failing = overdue = never = None
    if state.has("backups"):
        failing = sum(1 for b in state.backups.values() if b.newest_state == "Error")
        overdue = never = 0
        for v in vols:
            last = max(v.backup_last_success or 0.0, v.last_backup_at or 0.0)
            if not last:
                never += bool(v.backup_target)
            elif state.now - last > overdue_after:
                overdue += 1
    nodes = state.nodes.values()
    return ClusterSummary(
        longhorn_version=state.longhorn_version,
        volumes=len(state.volumes),
        volumes_unhealthy=sum(1 for v in vols if v.healthy is False),
        volumes_by_robustness=by_robustness,
        replicas_missing=missing,
        backups_failing=failing,
        backups_overdue=overdue,
        volumes_never_backed_up=never,
        nodes=len(state.nodes),
        nodes_not_ready=sum(1 for n in nodes if not n.ready),
        disks_with_trouble=sum(1 for n in nodes for d in n.disks if d.trouble),
    )
