"""The on-call view of one cluster state: what is wrong and where, as JSON-ready data for
the cluster page, ``/api/clusters/NAME`` and ``fleet-exporter triage``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from . import RESOURCES
from . import health as h
from .records import (
    NODE_REPLICA_STATES,
    BackupStats,
    ClusterState,
    Condition,
    NodeState,
    VolumeState,
    condition,
)


def triage(state: ClusterState) -> dict[str, Any]:
    """JSON-ready detail for the on-call page: what is wrong and where. Times are Unix
    seconds (or None). All strings are the cluster's, verbatim: render them as text.

    ``counted`` holds, for each count of the summary (``health.summarize``), the objects
    it counts, from the same functions; ``node_replicas`` the active replicas on each
    node by state (``longhorn_node_replicas``), and for a node that is not ready the
    volumes it held replicas of."""
    down = {n.name for n in h.nodes_not_ready(state)}
    return {
        "now": state.now,
        "longhorn_version": state.longhorn_version,
        "complete": sorted(state.complete),
        "incomplete": [r for r in RESOURCES if r not in state.complete],
        "settings": dict(sorted(state.settings.items())),
        "counted": counted(state),
        "volumes": [
            _triage_volume(state, v, down) for v in state.volumes.values() if not v.healthy
        ],
        "nodes": [_triage_node(n) for n in state.nodes.values() if n.trouble],
        "node_replicas": node_replicas(state),
        "backup_targets": [
            {
                "name": t.name,
                "available": t.available,
                "last_synced": t.last_synced,
                "poll_interval": t.poll_interval,
                "conditions": [_cond_dict(c) for c in t.conditions],
            }
            for t in state.backup_targets.values()
        ],
        "recurring_jobs": [
            {
                "name": j.name,
                "task": j.task,
                "groups": list(j.groups),
                "cron": j.cron,
                "retain": j.retain,
                "concurrency": j.concurrency,
                "executions": j.executions,
            }
            for j in state.recurring_jobs.values()
        ],
    }


def _names(volumes: list[VolumeState]) -> list[str]:
    return [v.name for v in volumes]


def _dicts(items: list[Any] | None) -> list[dict[str, Any]] | None:
    return None if items is None else [asdict(x) for x in items]


def counted(state: ClusterState) -> dict[str, Any]:
    """The objects behind each count of ``health.summarize`` (None: the count is unknown
    because a resource it needs did not list)."""
    missing = h.replicas_missing(state)
    return {
        "volumes_healthy": _names(h.volumes_healthy(state)),
        "volumes_unhealthy": _names(h.volumes_unhealthy(state)),
        "volumes_by_robustness": {
            r: _names(vs) for r, vs in h.volumes_by_robustness(state).items()
        },
        "replicas_missing": (
            None if missing is None else [{**asdict(m), "missing": m.missing} for m in missing]
        ),
        "backups_failing": _dicts(h.backups_failing(state)),
        "backups_overdue": _dicts(h.backups_overdue(state)),
        "volumes_never_backed_up": _dicts(h.volumes_never_backed_up(state)),
        "nodes_not_ready": [n.name for n in h.nodes_not_ready(state)],
        "disks_with_trouble": [{"node": n, "disk": d.name} for n, d in h.disks_with_trouble(state)],
    }


def node_replicas(state: ClusterState) -> list[dict[str, Any]] | None:
    """Per Longhorn node, its active replicas by state, as ``longhorn_node_replicas``
    counts them (None when a list it needs did not list); for a node that is not ready,
    the volumes it held active replicas of."""
    if not state.has("volumes", "replicas", "engines", "nodes"):
        return None
    held: dict[str, list[str]] = {}
    for v in state.volumes.values():
        for node in sorted({r.node for r in v.replica_views if r.active and r.node}):
            held.setdefault(node, []).append(v.name)
    out = []
    for name, n in state.nodes.items():
        counts = state.node_replicas.get(name, {})
        out.append(
            {
                "node": name,
                "ready": n.ready,
                **{s: counts.get(s, 0) for s in NODE_REPLICA_STATES},
                "volumes": None if n.ready else held.get(name, []),
            }
        )
    return out


def why(v: VolumeState, down_nodes: Collection[str] = ()) -> list[str]:
    """Why a volume is not healthy, in words: every reason that applies, worst first."""
    out: list[str] = []
    active = [r for r in v.replica_views if r.active]
    failed = [r for r in active if r.health == "failed"]
    desired = v.number_of_replicas
    scheduled = condition(v.conditions, "Scheduled")
    if scheduled is not None and scheduled.status == "False":
        detail = scheduled.message or scheduled.reason
        out.append("replica scheduling failed" + (f": {detail}" if detail else ""))
    if v.replicas_unscheduled:
        out.append(f"{_n(v.replicas_unscheduled, 'replica')} not scheduled to a node")
    if v.robustness == "faulted":
        if active and len(failed) == len(active):
            out.append(f"faulted: all {_n(len(active), 'replica')} failed")
        elif v.replicas is not None and not active:
            out.append("faulted: the volume has no replica")
        else:
            out.append("faulted: no healthy replica left")
    elif v.robustness == "degraded":
        text = "degraded"
        if v.replicas_healthy is not None and desired is not None:
            text += f": {v.replicas_healthy} of {desired} replicas healthy"
        if v.replicas_rebuilding:
            text += f", {v.replicas_rebuilding} rebuilding"
        if v.replicas_failed:
            text += f", {v.replicas_failed} failed"
        out.append(text)
    elif v.robustness == "unknown" and v.state == "detached":
        if v.healthy is None:
            out.append("detached: replicas not listed, so its replicas cannot be judged")
        elif not v.healthy:
            usable = sum(1 for r in active if r.node and not r.failed_at)
            out.append(
                f"detached with too few usable replicas: {usable} scheduled and not failed, "
                f"{'?' if desired is None else max(desired, 1)} needed"
            )
    elif v.robustness == "unknown":
        out.append(f"robustness unknown while {v.state or 'in no state'}")
    attached = v.state == "attached" and v.replicas_healthy is not None
    if attached and active and not any(r.mode for r in active):
        out.append("no engine reports its replicas")
    if v.read_only:
        out.append("filesystem read-only")
    on_down = sorted({r.node for r in active if r.node in down_nodes})
    if on_down:
        out.append("replicas on nodes not ready: " + ", ".join(on_down))
    if not out:  # never silent: say at least what the volume reports
        if v.healthy is None:
            out.append("health unknown: replicas or engines not listed")
        else:
            out.append(f"robustness {v.robustness}, state {v.state or 'empty'}")
    return out


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("" if count == 1 else "s")


def _triage_volume(state: ClusterState, v: VolumeState, down: Collection[str]) -> dict[str, Any]:
    newest: tuple[tuple[float, str], str, BackupStats] | None = None
    for (volume, target), b in state.backups.items():
        if volume == v.name and b.newest_key and (newest is None or b.newest_key > newest[0]):
            newest = (b.newest_key, target, b)
    last_backup = None
    if newest is not None:
        key, target, b = newest
        last_backup = {
            "backup_target": target,
            "name": key[1],
            "time": key[0],
            "state": b.newest_state,
            "error": b.newest_error,
        }
    snaps = v.snapshots
    return {
        "name": v.name,
        "pvc": v.pvc,
        "pvc_namespace": v.pvc_namespace,
        "state": v.state,
        "robustness": v.robustness,
        "healthy": v.healthy,
        "why": why(v, down),
        "owner_node": v.node,
        "attached_node": v.attached_node,
        "replicas_desired": v.number_of_replicas,
        "replicas_healthy": v.replicas_healthy,
        "replicas_rebuilding": v.replicas_rebuilding,
        "replicas_failed": v.replicas_failed,
        "replicas_unscheduled": v.replicas_unscheduled,
        "rebuild_progress": v.rebuild_progress,
        "replicas": [
            {
                "name": r.name,
                "node": r.node,
                "mode": r.mode,
                "health": r.health,
                "failed_at": r.failed_at,
                "state": r.state,
                "active": r.active,
                "rebuild_progress": r.rebuild_progress,
            }
            for r in v.replica_views
        ],
        "conditions": [_cond_dict(c) for c in v.conditions],
        "last_degraded_at": v.last_degraded_at,
        "last_backup_at": v.last_backup_at,
        "last_successful_backup": v.backup_last_success,
        "last_backup": last_backup,
        "snapshots": (
            None
            if snaps is None
            else {"count": snaps.count, "removed": snaps.removed, "newest": snaps.newest}
        ),
    }


def _cond_dict(c: Condition) -> dict[str, str]:
    return {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}


def _triage_node(n: NodeState) -> dict[str, Any]:
    return {
        "name": n.name,
        "ready": n.ready,
        "allow_scheduling": n.allow_scheduling,
        "conditions": [_cond_dict(c) for c in n.conditions if not c.true],
        "disks": [
            {
                "name": d.name,
                "path": d.path,
                "capacity": d.capacity,
                "available": d.available,
                "scheduled": d.scheduled,
                "reserved": d.reserved,
                "conditions": [_cond_dict(c) for c in d.conditions],
            }
            for d in n.disks
            if d.trouble
        ],
    }
