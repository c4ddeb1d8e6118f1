"""The shipped deploy/ pieces against a real Prometheus scraping the real exporter, which
serves a simulated fleet: discovery through /targets, relabelling, the `cluster` label,
probe_success per cluster, the alert rules (each alert names exactly the objects the
simulated Longhorn objects say are in trouble), and every dashboard panel query."""

import calendar
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from simulator.fleet import ClusterSpec
from simulator.objects import ClusterObjects, build_cluster

from .conftest import started_env
from .prometheus_harness import render_shipped_config, running_prometheus
from .test_deploy_grafana import OVERVIEW, TRIAGE, load, panel_queries, substitute

pytestmark = pytest.mark.prometheus

TROUBLED = "beta"  # every kind of trouble, so every alert and triage panel has something
UNREACHABLE = "epsilon"
HOUR = 3600

# The alerts issue 17 added or reworked: each must name at least one object here.
ON_CALL = {
    "LonghornVolumeFilesystemReadOnly",
    "LonghornVolumeReplicaSchedulingFailed",
    "LonghornVolumeUnhealthy",
    "LonghornVolumeActualSizeNearCapacity",
    "LonghornNodeStoragePressure",
    "LonghornBackupOverdue",
    "LonghornBackupFailed",
}
# The labels that say which object an alert is about, after `cluster`.
OBJECT_LABELS = ("volume", "node", "disk", "backup_target")


def specs() -> list[ClusterSpec]:
    return [
        ClusterSpec(name="alpha", volumes=6, nodes=3, seed=1),
        ClusterSpec(
            name=TROUBLED,
            volumes=16,
            nodes=4,
            seed=2,
            degraded_volumes=3,  # one of them rebuilding
            faulted_volumes=1,
            detached_volumes=1,
            detached_failed_volumes=1,
            unscheduled_volumes=1,
            unscheduled_extra_volumes=1,  # robustness healthy (longhorn/longhorn#11916)
            read_only_volumes=1,
            near_capacity_volumes=1,
            too_many_snapshots_volumes=1,
            failing_backups=1,
            recovered_backups=1,  # failed, then completed: LonghornBackupFailed stays quiet
            stuck_backups=1,
            overdue_backups=1,
            never_backed_up_volumes=1,  # the default group's daily job applies to it
            nodes_down=1,
            disks_under_pressure=1,
            backup_target_available=False,
            faults={"backupvolumes": "403"},  # a list RBAC forbids, for "Lists failing"
        ),
        # RBAC without recurring jobs: no backup interval, so backups are judged by the
        # fixed 24 h + 2 h, and nothing alerts.
        ClusterSpec(name="delta", volumes=4, nodes=2, seed=4, faults={"recurringjobs": "403"}),
        ClusterSpec(name=UNREACHABLE, volumes=3, nodes=2, seed=5, unreachable=True),
    ]


def epoch(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def by_volume(objs: list[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in objs:
        out[obj[field]["volumeName"]].append(obj)
    return out


def condition(status: dict[str, Any], ctype: str) -> tuple[str, str]:
    """(status, reason) of the condition `ctype` in a status (or disk status)."""
    (found,) = [c for c in status["conditions"] if c["type"] == ctype]
    return found["status"], found["reason"]


def expected_alerts(objects: ClusterObjects, now: float) -> dict[str, set[tuple[str, ...]]]:
    """(cluster, object labels...) per alert for the troubled cluster, read from its
    Longhorn objects as Longhorn means them (reference/longhorn.md), not as the exporter or
    the rules compute them. The daily backup job of the `default` group applies to every
    volume, and the backup target is `default`."""
    items, c = objects.items, TROUBLED
    engines = {e["spec"]["volumeName"]: e for e in items["engines"]}
    replicas = by_volume(items["replicas"], "spec")
    backups = by_volume(items["backups"], "status")
    want: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for v in items["volumes"]:
        name, st, desired = v["metadata"]["name"], v["status"], v["spec"]["numberOfReplicas"]
        engine = engines[name]["status"]
        reps = [r for r in replicas[name] if r["spec"]["active"]]
        modes = engine["replicaModeMap"] if st["state"] == "attached" else {}
        mode = Counter(
            modes.get(r["metadata"]["name"])
            for r in reps
            if r["spec"]["nodeID"] and not r["spec"]["failedAt"]
        )
        unplaced = any(not r["spec"]["nodeID"] and not r["spec"]["failedAt"] for r in reps)
        scheduling = condition(st, "Scheduled")[0] == "False" or unplaced
        usable = sum(mode.values())  # placed and not failed
        if st["robustness"] in ("faulted", "degraded"):
            want[f"LonghornVolume{st['robustness'].title()}"].add((c, name))
        if scheduling:
            want["LonghornVolumeReplicaSchedulingFailed"].add((c, name))
        if (
            engine["currentState"] == "running"
            and condition(engine, "FilesystemReadOnly")[0] == "True"
        ):
            want["LonghornVolumeFilesystemReadOnly"].add((c, name))
        # Detached: robustness reads unknown; it needs `desired` usable replicas to come up.
        detached = st["state"] == "detached" and st["robustness"] != "faulted"
        if detached and not scheduling and usable < max(1, desired):
            want["LonghornVolumeUnhealthy"].add((c, name))
        if st["state"] == "attached" and mode["RW"] < desired and not mode["WO"]:
            want["LonghornVolumeReplicasBelowDesired"].add((c, name))
        if st["actualSize"] > 0.9 * int(v["spec"]["size"]):
            want["LonghornVolumeActualSizeNearCapacity"].add((c, name))
        done, failed, running = [0.0], [], []
        for b in backups.get(name, []):
            state = b["status"]["state"]
            if state == "Completed":
                done.append(epoch(b["status"]["backupCreatedAt"]))
            elif state == "Error":
                failed.append(epoch(b["metadata"]["creationTimestamp"]))
            elif state in ("", "Pending", "InProgress"):
                running.append(epoch(b["metadata"]["creationTimestamp"]))
        since = max(done) or epoch(v["metadata"]["creationTimestamp"])
        if now - since > 24 * HOUR + 2 * HOUR:
            want["LonghornBackupOverdue"].add((c, name, "default"))
        if failed and max(failed) > max(done):
            want["LonghornBackupFailed"].add((c, name, "default"))
        if running and now - min(running) > 6 * HOUR:
            want["LonghornBackupStuck"].add((c, name, "default"))
    for target in items["backuptargets"]:
        if not target["status"]["available"] and target["status"]["lastSyncedAt"]:
            want["LonghornBackupTargetUnavailable"].add((c, target["metadata"]["name"]))
    for node in items["nodes"]:
        name = node["metadata"]["name"]
        if condition(node["status"], "Ready")[0] == "False":
            want["LonghornNodeNotReady"].add((c, name))
        for disk, ds in node["status"]["diskStatus"].items():
            if condition(ds, "Schedulable") == ("False", "DiskPressure"):
                want["LonghornNodeStoragePressure"].add((c, name))
            if ds["storageMaximum"] - ds["storageAvailable"] > 0.85 * ds["storageMaximum"]:
                want["LonghornDiskNearlyFull"].add((c, name, disk))
    return want


def node_replicas(objects: ClusterObjects, node: str) -> dict[str, float]:
    """What node `node` holds, by state, as docs/metrics.md defines longhorn_node_replicas."""
    modes: dict[str, str] = {}
    for e in objects.items["engines"]:
        modes |= e["status"]["replicaModeMap"] or {}
    held: Counter[str] = Counter({"healthy": 0, "rebuilding": 0, "failed": 0, "stopped": 0})
    for r in objects.items["replicas"]:
        if r["spec"]["nodeID"] == node:
            mode = modes.get(r["metadata"]["name"])
            failed = r["spec"]["failedAt"] or mode == "ERR"
            held[
                "failed" if failed else {"RW": "healthy", "WO": "rebuilding"}.get(mode, "stopped")
            ] += 1
    return {state: float(n) for state, n in held.items()}


async def test_shipped_prometheus_config_rules_and_dashboards(tmp_path):
    now = time.time()
    fleet = specs()
    troubled = build_cluster(next(s for s in fleet if s.name == TROUBLED), now)
    async with started_env(tmp_path, fleet, "defaults: {cache_ttl: 1s}\n", now=now) as env:
        address = env.url.removeprefix("http://")
        config = render_shipped_config(
            tmp_path / "p", {"EXPORTER_ADDRESS": address}, intervals=("1s", "900ms")
        )
        names = sorted(s.name for s in fleet)
        with running_prometheus(config, tmp_path / "run") as prom:
            # Every configured cluster becomes a target through /targets, and is up.
            def all_up():
                targets = [t for t in prom.targets() if t["labels"]["job"] == "longhorn-fleet"]
                up = [t for t in targets if t["health"] == "up"]
                return len(targets) == len(names) and len(up) == len(names) and targets

            targets = await prom.async_wait_for(all_up, 40, "every cluster target up")
            assert sorted(t["labels"]["instance"] for t in targets) == names
            for t in targets:
                assert "cluster" not in t["labels"], "the probe job must set no cluster label"
                assert t["scrapeUrl"].endswith(f"/probe?cluster={t['labels']['instance']}")

            # Every series carries cluster == instance; nothing was renamed exported_cluster.
            await prom.async_wait_for(
                lambda: (
                    len(prom.query('count by (cluster) (longhorn_up{job="longhorn-fleet"})'))
                    == len(names)
                ),
                20,
                "longhorn_up for every cluster",
            )
            # (up and scrape_* are Prometheus' per-target series, ALERTS* its alert state:
            # a fleet-wide rule aggregated by job carries no cluster. None is the exporter's.)
            exported = '{job="longhorn-fleet", __name__!~"up|scrape_.+|ALERTS.*"}'
            pairs = prom.query(f"count by (cluster, instance) ({exported})")
            unlabelled = prom.query(exported.replace("}", ', cluster=""}'))
            assert unlabelled == [], [s["metric"] for s in unlabelled][:5]
            assert {(p["metric"]["cluster"], p["metric"]["instance"]) for p in pairs} == {
                (n, n) for n in names
            }
            assert prom.query('{exported_cluster!=""}') == []

            # probe_success is 0 exactly for the cluster the simulator breaks.
            success = {
                s["metric"]["cluster"]: s["value"][1]
                for s in prom.query('probe_success{job="longhorn-fleet"}')
            }
            assert success == {n: ("0" if n == UNREACHABLE else "1") for n in names}

            # The shipped rules, as shipped (`for:` and all): every alert is pending (or
            # firing) for exactly the objects the troubled cluster's Longhorn objects put
            # in trouble, plus the unreachable cluster; nothing else, nothing for the
            # healthy clusters. (Right after start-up a rule can see one job scraped before
            # the other, so wait for the state to settle rather than judge the first
            # evaluation.)
            def alerting() -> dict[str, set[tuple[str, ...]]]:
                found: dict[str, set[tuple[str, ...]]] = defaultdict(set)
                for a in prom.alerts():
                    labels = a["labels"]
                    found[labels["alertname"]].add(
                        (
                            labels.get("cluster", ""),
                            *(labels[k] for k in OBJECT_LABELS if k in labels),
                        )
                    )
                return found

            expected = expected_alerts(troubled, now)
            expected["LonghornClusterUnreachable"] = {(UNREACHABLE,)}
            assert not ON_CALL - set(expected), "each of issue 17's alerts has something here"
            try:
                await prom.async_wait_for(lambda: alerting() == expected, 30, "the alerts")
            except TimeoutError:
                found = alerting()
                diff = {
                    name: {
                        "missing": expected[name] - found[name],
                        "extra": found[name] - expected[name],
                    }
                    for name in sorted(set(found) | set(expected))
                    if found[name] != expected[name]
                }
                raise AssertionError(f"alerts differ from the objects: {diff}") from None
            for group in prom.rules():
                for rule in group["rules"]:
                    assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            # What each of issue 17's alerts is for, by the simulated situation:
            overdue = {v for _, v, _ in expected["LonghornBackupOverdue"]}
            backed_up = {b["status"]["volumeName"] for b in troubled.items["backups"]}
            assert overdue - backed_up, "a volume never backed up, under a daily job"
            errors = {
                b["status"]["volumeName"]
                for b in troubled.items["backups"]
                if b["status"]["state"] == "Error"
            }
            failed = {v for _, v, _ in expected["LonghornBackupFailed"]}
            assert errors - failed, "a failure that a later backup made good stays quiet"
            robustness = {
                v["metadata"]["name"]: v["status"]["robustness"] for v in troubled.items["volumes"]
            }
            assert "healthy" in {
                robustness[v] for _, v in expected["LonghornVolumeReplicaSchedulingFailed"]
            }, "a replica that cannot be scheduled beside healthy ones"

            # A node that is down still shows what it held (and LonghornNodeNotReady's
            # runbook points there).
            ((_, down),) = expected["LonghornNodeNotReady"]
            held = {
                s["metric"]["state"]: float(s["value"][1])
                for s in prom.query(
                    f'longhorn_node_replicas{{cluster="{TROUBLED}", node="{down}"}}'
                )
            }
            assert held == node_replicas(troubled, down)
            assert held["failed"] > 0 and held["healthy"] == held["rebuilding"] == 0

            # Every dashboard panel query returns data from this Prometheus (rate() panels
            # need two scrapes of a series, so poll until every panel has data).
            def empty_panels():
                empty = []
                for board, cluster in ((OVERVIEW, ".+"), (TRIAGE, TROUBLED)):
                    for q in panel_queries(load(board)):
                        expr = substitute(q.expr, cluster)
                        if not prom.query(expr):
                            empty.append(f"{q.board} / {q.panel}: {expr}")
                return empty

            try:
                await prom.async_wait_for(lambda: not empty_panels(), 20, "data in every panel")
            except TimeoutError:
                raise AssertionError("panels without data:\n" + "\n".join(empty_panels())) from None
