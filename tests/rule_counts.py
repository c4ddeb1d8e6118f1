"""What each count of the pages should be, computed from a probe's own metrics the way the
alerting rules (deploy/alerts/longhorn-fleet.rules.yml) compute it: PromQL-like arithmetic
over samples, written here independently of ``longhorn.health``, so a test can hold the
pages, the JSON, the CLI and the metrics to one definition.

``rule_objects`` gives, per summary key, the set of objects counted (volumes, (volume,
target) pairs, nodes, (node, disk) pairs); ``rule_counts`` the numbers the summary holds.
A value is None where the metrics cannot say (a resource did not list).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ROBUSTNESS = ("unknown", "healthy", "degraded", "faulted")
GRACE = 2 * 3600.0  # LonghornBackupOverdue
DEFAULT_INTERVAL = 24 * 3600.0

Sample = tuple[str, dict[str, str], float]


def normalize(samples: Mapping[tuple[str, Any], float]) -> list[Sample]:
    """Samples keyed ``(name, labels)`` with labels as a frozenset or sorted tuple of
    pairs (both test helpers' forms) to ``(name, labels, value)``."""
    return [(name, dict(labels), value) for (name, labels), value in samples.items()]


class Metrics:
    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def select(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        return [
            (labels, value)
            for n, labels, value in self.samples
            if n == name and all(labels.get(k) == v for k, v in match.items())
        ]

    def by(self, name: str, *keys: str, **match: str) -> dict[Any, float]:
        """``max by (keys) (name{match})``; a single key gives plain keys."""
        out: dict[Any, float] = {}
        for labels, value in self.select(name, **match):
            k = tuple(labels.get(x, "") for x in keys)
            k = k[0] if len(k) == 1 else k
            out[k] = max(out.get(k, value), value)
        return out

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def listed(self) -> set[str] | None:
        """Resources that listed completely, when the probe says so."""
        ok = self.by("longhorn_exporter_list_success", "resource")
        return {r for r, v in ok.items() if v == 1} if ok else None


def rule_objects(
    samples: Iterable[Sample], now: float, complete: set[str] | None = None
) -> dict[str, Any]:
    m = Metrics(samples)
    if complete is None:
        complete = m.listed()
    assert complete is not None, "say which resources listed: the samples do not"
    volumes = set(m.by("longhorn_volume_info", "volume"))
    healthy = m.by("longhorn_volume_healthy", "volume")
    out: dict[str, Any] = {
        "volumes": volumes,
        "volumes_healthy": {v for v, x in healthy.items() if x == 1},
        "volumes_unhealthy": {v for v, x in healthy.items() if x == 0},
        "volumes_by_robustness": {
            r: {v for v, x in m.by("longhorn_volume_robustness", "volume", state=r).items() if x}
            for r in ROBUSTNESS
        },
    }
    # healthy < desired, unless detached and healthy (longhorn_volume_healthy 1)
    if {"replicas", "engines"} <= complete:
        have = m.by("longhorn_volume_replicas_healthy", "volume")
        want = m.by("longhorn_volume_replicas_desired", "volume")
        detached = m.by("longhorn_volume_state", "volume", state="detached")
        out["replicas_missing"] = {
            v: int(want[v] - have[v])
            for v in have
            if v in want
            and have[v] < want[v]
            and not (detached.get(v) == 1 and healthy.get(v) == 1)
        }
    else:
        out["replicas_missing"] = None
    if "backups" in complete:
        last_volume = m.by("longhorn_volume_last_backup_timestamp_seconds", "volume")
        failures = m.by("longhorn_backup_last_failure_timestamp_seconds", "volume", "backup_target")
        out["backups_failing"] = {
            (v, t) for (v, t), f in failures.items() if v in volumes and f > last_volume[v]
        }
        interval = m.by("longhorn_volume_backup_interval_seconds", "volume")
        capacity = m.by("longhorn_volume_capacity_bytes", "volume")
        success = m.by("longhorn_backup_last_success_timestamp_seconds", "volume", "backup_target")
        overdue = set()
        for (v, t), at in success.items():
            if at <= 0 or v not in volumes:
                continue
            if v in interval:
                allowed = interval[v] + GRACE
            elif v in capacity:
                allowed = DEFAULT_INTERVAL + GRACE
            else:
                continue
            if now - at > allowed:
                overdue.add((v, t))
        out["backups_overdue"] = overdue
        if "recurringjobs" in complete:
            created = m.by("longhorn_volume_created_timestamp_seconds", "volume")
            out["volumes_never_backed_up"] = {
                v
                for v, i in interval.items()
                if v in created and now - created[v] > i + GRACE and last_volume.get(v) == 0
            }
        else:
            out["volumes_never_backed_up"] = None
    else:
        out["backups_failing"] = out["backups_overdue"] = out["volumes_never_backed_up"] = None
    nodes = set(m.by("longhorn_node_status", "node"))
    ready = m.by("longhorn_node_status", "node", condition="ready")
    out["nodes"] = nodes
    out["nodes_not_ready"] = {n for n in nodes if ready.get(n) != 1}
    disks = set(m.by("longhorn_disk_status", "node", "disk"))
    disks |= set(m.by("longhorn_disk_capacity_bytes", "node", "disk"))
    disk_ready = m.by("longhorn_disk_status", "node", "disk", condition="ready")
    disk_sched = m.by("longhorn_disk_status", "node", "disk", condition="schedulable")
    out["disks_with_trouble"] = {
        d for d in disks if disk_ready.get(d) != 1 or disk_sched.get(d) != 1
    }
    per_node: dict[str, dict[str, int]] = {}
    for labels, value in m.select("longhorn_node_replicas"):
        per_node.setdefault(labels["node"], {})[labels["state"]] = int(value)
    out["node_replicas"] = per_node or None
    return out


def rule_counts(
    samples: Iterable[Sample], now: float, complete: set[str] | None = None
) -> dict[str, Any]:
    """The summary's numbers (``health.ClusterSummary`` keys) from the metrics."""
    o = rule_objects(samples, now, complete)

    def n(key: str) -> int | None:
        return None if o[key] is None else len(o[key])

    missing = o["replicas_missing"]
    return {
        "volumes": len(o["volumes"]),
        "volumes_healthy": len(o["volumes_healthy"]),
        "volumes_unhealthy": len(o["volumes_unhealthy"]),
        "volumes_by_robustness": {r: len(v) for r, v in o["volumes_by_robustness"].items()},
        "replicas_missing": None if missing is None else sum(missing.values()),
        "volumes_missing_replicas": None if missing is None else len(missing),
        "backups_failing": n("backups_failing"),
        "backups_overdue": n("backups_overdue"),
        "volumes_never_backed_up": n("volumes_never_backed_up"),
        "nodes": len(o["nodes"]),
        "nodes_not_ready": len(o["nodes_not_ready"]),
        "disks_with_trouble": len(o["disks_with_trouble"]),
    }
