"""The on-call view of one cluster state: what is wrong and where, as JSON-ready data for
the cluster page, ``/api/clusters/NAME`` and ``fleet-exporter triage``."""

from __future__ import annotations

from typing import Any

from . import RESOURCES
from .records import BackupStats, ClusterState, Condition, NodeState, VolumeState


def triage(state: ClusterState) -> dict[str, Any]:
    """JSON-ready detail for the on-call page: what is wrong and where. Times are Unix
    seconds (or None). All strings are the cluster's, verbatim: render them as text."""
    return {
        "now": state.now,
        "longhorn_version": state.longhorn_version,
        "complete": sorted(state.complete),
        "incomplete": [r for r in RESOURCES if r not in state.complete],
        "settings": dict(sorted(state.settings.items())),
        "volumes": [_triage_volume(state, v) for v in state.volumes.values() if not v.healthy],
        "nodes": [_triage_node(n) for n in state.nodes.values() if n.trouble],
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


def _triage_volume(state: ClusterState, v: VolumeState) -> dict[str, Any]:
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
                "conditions": [_cond_dict(c) for c in d.conditions],
            }
            for d in n.disks
            if d.trouble
        ],
    }
