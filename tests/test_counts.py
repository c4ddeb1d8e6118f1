"""The count definitions (longhorn/health.py) against the metrics and the alerting rules:
case by case, the summary, the objects the triage view lists for each count, and the
numbers the rules' arithmetic gives from the same refresh's metrics (tests/rule_counts.py)
are one and the same. Also why an unhealthy volume is unhealthy, in words."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import pytest

from fleet_exporter.longhorn.health import summarize
from fleet_exporter.longhorn.triage import triage
from fleet_exporter.units import DASH, exact_bytes, size, split_sizes, with_sizes

from .rule_counts import normalize, rule_counts, rule_objects
from .test_longhorn import ALL, NOW, backup, cond, engine, example, reduce_objects, replica, volume
from .test_metrics import render

DETACHED = {"state": "detached", "robustness": "unknown"}
FAILED = "2026-07-09T12:00:00Z"


def with_labels(v: dict[str, Any], **labels: str) -> dict[str, Any]:
    v = copy.deepcopy(v)
    v["metadata"]["labels"].update(labels)
    return v


def job(name: str, cron: str, task: str = "backup", groups: tuple[str, ...] = ("default",)):
    return {
        "metadata": {"name": name},
        "spec": {"task": task, "cron": cron, "groups": list(groups), "retain": 7},
        "status": {"executionCount": 3},
    }


def three(vol: str, modes: list[str], failed: tuple[int, ...] = (), nodes=("n1", "n2", "n3")):
    """Three replicas of ``vol`` and its engine with ``modes`` ("" = no entry)."""
    reps = [
        replica(f"{vol}-{i}", vol, node=nodes[i], failed_at=FAILED if i in failed else "")
        for i in range(3)
    ]
    eng = engine(
        f"{vol}-e", vol, {f"{vol}-{i}": m for i, m in enumerate(modes) if m}, {}, node="n1"
    )
    return reps, eng


def case(*vols: tuple[dict[str, Any], list[str], tuple[int, ...]], **more: Any) -> dict:
    objects: dict[str, list[Any]] = {"volumes": [], "replicas": [], "engines": []}
    for v, modes, failed in vols:
        reps, eng = three(v["metadata"]["name"], modes, failed)
        objects["volumes"].append(v)
        objects["replicas"] += reps
        objects["engines"].append(eng)
    for key, items in more.items():
        objects[key] = items
    return objects


NEVER_LABEL = {"recurring-job.longhorn.io/snap-only": "enabled"}  # a volume no backup job covers
WEEKLY_LABEL = {"recurring-job.longhorn.io/weekly": "enabled"}
CASES: list[tuple[str, dict, frozenset[str], dict[str, Any], dict[str, list[str]]]] = [
    (
        "a healthy detached volume misses no replica (no engine runs, so none is RW)",
        case((volume("idle", **DETACHED), ["", "", ""], ())),
        ALL,
        {"volumes_healthy": 1, "volumes_unhealthy": 0, "replicas_missing": 0},
        {},
    ),
    (
        "a detached volume with a failed replica: unhealthy, all three missing",
        case((volume("short", **DETACHED), ["", "", ""], (2,))),
        ALL,
        {"volumes_unhealthy": 1, "replicas_missing": 3, "volumes_missing_replicas": 1},
        {"short": ["detached with too few usable replicas: 2 scheduled and not failed, 3 needed"]},
    ),
    (
        "faulted, all replicas failed",
        case((volume("dead", state="detached", robustness="faulted"), ["", "", ""], (0, 1, 2))),
        ALL,
        {"volumes_unhealthy": 1, "replicas_missing": 3},
        {"dead": ["faulted: all 3 replicas failed"]},
    ),
    (
        "degraded and rebuilding: the rebuilding replica is still missing",
        case((volume("deg", robustness="degraded"), ["RW", "RW", "WO"], ())),
        ALL,
        {"volumes_unhealthy": 1, "replicas_missing": 1},
        {"deg": ["degraded: 2 of 3 replicas healthy, 1 rebuilding"]},
    ),
    (
        "scheduling failed while robustness says healthy",
        case(
            (
                volume(
                    "nosched",
                    conditions=[
                        cond("Scheduled", "False", "ReplicaSchedulingFailure", "insufficient")
                    ],
                ),
                ["RW", "RW", "RW"],
                (),
            )
        ),
        ALL,
        {"volumes_unhealthy": 1, "replicas_missing": 0},
        {"nosched": ["replica scheduling failed: insufficient"]},
    ),
    (
        "attached with no engine",
        case((volume("orphan", robustness="unknown"), ["", "", ""], ())),
        ALL,
        {"volumes_unhealthy": 1, "replicas_missing": 3},
        {"orphan": ["robustness unknown while attached", "no engine reports its replicas"]},
    ),
    (
        "replicas and engines not listed: missing replicas unknown",
        case((volume("x", **DETACHED), ["", "", ""], ())),
        frozenset(ALL - {"engines"}),
        {"replicas_missing": None, "volumes_missing_replicas": None},
        {},
    ),
    (
        "backups: failed after the last success, and a failure a later success resolved",
        case(
            (volume("bad"), ["RW"] * 3, ()),
            (volume("fixed"), ["RW"] * 3, ()),
            backups=[
                backup("b1", "bad", "Completed", "2026-07-09T02:00:00Z", "2026-07-09T02:10:00Z"),
                backup("b2", "bad", "Error", "2026-07-09T20:00:00Z", error="denied"),
                backup("f1", "fixed", "Error", "2026-07-09T02:00:00Z"),
                backup("f2", "fixed", "Completed", "2026-07-09T20:00:00Z", "2026-07-09T20:10:00Z"),
            ],
            recurringjobs=[job("daily", "0 2 * * *")],
        ),
        ALL,
        {"backups_failing": 1, "backups_overdue": 0, "volumes_never_backed_up": 0},
        {},
    ),
    (
        "overdue: a daily job's 24 h + 2 h grace, a weekly job's 7 d + 2 h, 26 h without a job",
        case(
            (volume("late"), ["RW"] * 3, ()),
            (volume("ontime"), ["RW"] * 3, ()),
            (with_labels(volume("weekly"), **WEEKLY_LABEL), ["RW"] * 3, ()),
            (with_labels(volume("nojob"), **NEVER_LABEL), ["RW"] * 3, ()),
            backups=[
                # 27 h and 25 h before NOW; 3 days (weekly: fine); no job: 30 h (> 26 h)
                backup("l", "late", "Completed", "2026-07-08T20:50:00Z", "2026-07-08T21:00:00Z"),
                backup("o", "ontime", "Completed", "2026-07-08T22:50:00Z", "2026-07-08T23:00:00Z"),
                backup("w", "weekly", "Completed", "2026-07-07T00:00:00Z", "2026-07-07T00:10:00Z"),
                backup("n", "nojob", "Completed", "2026-07-08T17:50:00Z", "2026-07-08T18:00:00Z"),
                backup(
                    "s",
                    "late",
                    "Completed",
                    "2026-07-09T22:00:00Z",
                    "2026-07-09T22:10:00Z",
                    target="dr",
                ),
            ],
            recurringjobs=[
                job("daily", "0 2 * * *"),
                job("weekly", "0 3 * * 0", groups=()),
                job("snap-only", "0 * * * *", task="snapshot", groups=()),
            ],
        ),
        ALL,
        {"backups_overdue": 2, "backups_failing": 0, "volumes_never_backed_up": 0},
        {},
    ),
    (
        "never backed up: only where a backup job applies and the volume is old enough",
        case(
            (volume("never"), ["RW"] * 3, ()),
            (with_labels(volume("nobody-asked"), **NEVER_LABEL), ["RW"] * 3, ()),
            recurringjobs=[
                job("daily", "0 2 * * *"),
                job("snap-only", "0 * * * *", "snapshot", ()),
            ],
            backups=[],
        ),
        ALL,
        {"volumes_never_backed_up": 1, "backups_overdue": 0},
        {},
    ),
    (
        "recurring jobs not listed: never-backed-up unknown, overdue by the 26 h default",
        case(
            (volume("late"), ["RW"] * 3, ()),
            backups=[
                backup("l", "late", "Completed", "2026-07-08T20:50:00Z", "2026-07-08T21:00:00Z")
            ],
        ),
        frozenset(ALL - {"recurringjobs"}),
        {"volumes_never_backed_up": None, "backups_overdue": 1},
        {},
    ),
    (
        "backups not listed: every backup count unknown",
        case((volume("v"), ["RW"] * 3, ())),
        frozenset(ALL - {"backups"}),
        {"backups_failing": None, "backups_overdue": None, "volumes_never_backed_up": None},
        {},
    ),
]


def _node_down() -> dict[str, Any]:
    node = example("node.yaml")
    node["metadata"]["name"] = "n3"
    node["status"]["conditions"][0] = cond("Ready", "False", "ManagerPodDown")
    node["status"]["diskStatus"]["nvme-1"]["conditions"][1] = cond(
        "Schedulable", "False", "DiskPressure", "Scheduled 4386235351040, Available 1288490188800"
    )
    return node


CASES.append(
    (
        "a node down with a disk under pressure; its replicas fail",
        case(
            (volume("hit", robustness="degraded"), ["RW", "RW", "ERR"], ()),
            nodes=[example("node.yaml"), _node_down()],
        ),
        ALL,
        {"nodes": 2, "nodes_not_ready": 1, "disks_with_trouble": 1, "replicas_missing": 1},
        {"hit": ["degraded: 2 of 3 replicas healthy, 1 failed", "replicas on nodes not ready: n3"]},
    )
)


@pytest.mark.parametrize(
    ("objects", "complete", "expected", "why"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_counts_are_the_rules_counts(objects, complete, expected, why) -> None:
    state = reduce_objects(objects, complete)
    summary = asdict(summarize(state))
    assert {k: summary[k] for k in expected} == expected
    # The same numbers from the metrics of this refresh, by the rules' arithmetic.
    samples = normalize(render(state))
    by_rules = rule_counts(samples, NOW, set(complete))
    assert {k: summary[k] for k in by_rules} == by_rules
    # Each count expands to exactly the objects the rules count.
    t = triage(state)
    objects_ = rule_objects(samples, NOW, set(complete))
    counted = t["counted"]
    assert set(counted["volumes_unhealthy"]) == objects_["volumes_unhealthy"]
    assert set(counted["volumes_healthy"]) == objects_["volumes_healthy"]
    for r, names in counted["volumes_by_robustness"].items():
        assert set(names) == objects_["volumes_by_robustness"][r]
    if objects_["replicas_missing"] is None:
        assert counted["replicas_missing"] is None
    else:
        assert {m["volume"]: m["missing"] for m in counted["replicas_missing"]} == objects_[
            "replicas_missing"
        ]
    for key in ("backups_failing", "backups_overdue"):
        got = counted[key]
        want = objects_[key]
        assert (None if got is None else {(b["volume"], b["backup_target"]) for b in got}) == want
    never = counted["volumes_never_backed_up"]
    assert (None if never is None else {b["volume"] for b in never}) == objects_[
        "volumes_never_backed_up"
    ]
    assert set(counted["nodes_not_ready"]) == objects_["nodes_not_ready"]
    assert {(d["node"], d["disk"]) for d in counted["disks_with_trouble"]} == objects_[
        "disks_with_trouble"
    ]
    # Every volume that is not healthy says why.
    reasons = {v["name"]: v["why"] for v in t["volumes"]}
    assert all(reasons.values()), reasons
    for name, words in why.items():
        assert reasons[name] == words


def test_replicas_per_node_are_the_metric_and_a_down_node_names_its_volumes() -> None:
    objects = case(
        (volume("hit", robustness="degraded"), ["RW", "RW", "ERR"], ()),
        (volume("idle", **DETACHED), ["", "", ""], ()),
        nodes=[example("node.yaml"), _node_down()],
    )
    for n in objects["nodes"][:1]:
        n["metadata"]["name"] = "n1"
    state = reduce_objects(objects)
    t = triage(state)
    samples = normalize(render(state))
    per_node = rule_objects(samples, NOW, set(ALL))["node_replicas"]
    got = {
        n["node"]: {s: n[s] for s in ("healthy", "rebuilding", "failed", "stopped")}
        for n in t["node_replicas"]
    }
    assert got == per_node
    assert got["n1"] == {"healthy": 1, "rebuilding": 0, "failed": 0, "stopped": 1}
    down = next(n for n in t["node_replicas"] if n["node"] == "n3")
    assert (down["ready"], down["volumes"], down["failed"]) == (False, ["hit", "idle"], 1)
    assert next(n for n in t["node_replicas"] if n["node"] == "n1")["volumes"] is None
    partial = reduce_objects(objects, frozenset(ALL - {"engines"}))
    assert triage(partial)["node_replicas"] is None


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (512 * 2**20, "512 MiB"),
        (100 * 2**30, "100 GiB"),
        (4386235351040, "3.99 TiB"),
        (None, DASH),
    ],
)
def test_sizes_in_binary_units(n, text) -> None:
    assert size(n) == text


def test_byte_counts_in_longhorn_messages() -> None:
    message = "Disk d is not schedulable; Scheduled 4386235351040, Available 1288490188800"
    assert (
        with_sizes(message) == "Disk d is not schedulable; Scheduled 3.99 TiB, Available 1.17 TiB"
    )
    pieces = split_sizes(message)
    assert ("3.99 TiB", 4386235351040) in pieces
    assert "".join(t if n is None else str(n) for t, n in pieces) == message
    assert with_sizes("at 1788000000 seconds") == "at 1788000000 seconds"  # not a size word
    assert exact_bytes(4386235351040) == "4,386,235,351,040 bytes"
