"""`promtool check metrics` (Prometheus' own parser and linter) on the answer for a large
simulated cluster: it must parse, and the only lint finding allowed is the documented
exception, Longhorn's `longhorn_node_count_total` gauge (docs/metrics.md)."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pytest

from fleet_exporter.exposition import encode
from fleet_exporter.prober import ResourceResult, collection_families
from simulator.fleet import ClusterSpec
from tests.steps import families as longhorn_families
from tests.test_longhorn import reduce_simulated

ALLOWED = 'longhorn_node_count_total non-counter metrics should not have "_total" suffix'


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `.ci/run` installs it (Debian package `prometheus`, "
            "`apt-get install -y --no-install-recommends prometheus`)"
        )
    return path


def check_metrics(body: bytes) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, timeout=120, check=False
    )
    lines = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
    return proc.returncode, [line for line in lines if line.strip()]


def test_large_cluster_answer_passes_promtool() -> None:
    spec = ClusterSpec(
        name="large",
        volumes=1000,
        replicas_per_volume=3,
        snapshots_per_volume=10,
        backups_per_volume=5,
        nodes=12,
        disks_per_node=2,
        degraded_volumes=0.05,
        faulted_volumes=0.01,
        detached_volumes=0.1,
        unscheduled_volumes=0.01,
        too_many_snapshots_volumes=0.02,
        failing_backups=0.03,
        stuck_backups=0.01,
        pending_backups=0.01,
        overdue_backups=0.02,
        never_backed_up_volumes=0.02,
        nodes_down=1,
        disks_under_pressure=2,
        hostile_names=True,
        malformed=True,
    )
    state, churn, listed = reduce_simulated(spec)
    results = {
        r: ResourceResult(ok=True, objects=n, malformed=bad) for r, (n, bad) in listed.items()
    }
    assert results["volumes"].malformed > 0  # the simulator's broken objects were skipped
    families = [
        *collection_families(True, results, Counter({"snapshots": 2})),
        *longhorn_families(state, churn),
    ]
    series = sum(len(f.samples) for f in families)
    assert series > 40_000

    code, lines = check_metrics(encode(families, 'prod-"eu"\n-01'))
    assert lines == [ALLOWED]
    assert code == 3  # promtool's exit status for lint findings (1 would be a parse error)


def test_promtool_catches_what_it_should() -> None:
    """The check is not vacuous: a broken exposition fails to parse, and the lint names a
    gauge with a counter's suffix."""
    code, _ = check_metrics(b'x{a="unterminated} 1\n')
    assert code == 1
    code, lines = check_metrics(b"# HELP y_total h\n# TYPE y_total gauge\ny_total 1\n")
    assert (code, lines) == (3, ['y_total non-counter metrics should not have "_total" suffix'])
