"""docs/metrics.md is the contract: every Longhorn metric the code emits is documented
there with its type and labels, every documented one is emitted for a cluster that
exercises every path, and each is omitted exactly when a resource its "needs" column
names did not list completely."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet_exporter.exposition import Family
from fleet_exporter.longhorn import RESOURCES
from fleet_exporter.longhorn.catalogue import VOLUME_LABELS
from fleet_exporter.longhorn.churn import SnapshotChurn
from fleet_exporter.longhorn.records import ClusterState
from simulator.fleet import ClusterSpec
from tests.steps import families
from tests.test_longhorn import reduce_simulated

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
# Sections rendered by the lead (probe head, collection, the exporter's own /metrics).
NOT_LONGHORN = ("Probe and collection", "The exporter's own metrics")
ALL = frozenset(RESOURCES)
# Rows specified ahead of the code (the alert rules and dashboards use them already).


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    type: str
    labels: frozenset[str]
    needs: frozenset[str]  # resources whose failure omits the metric entirely


def doc_rows() -> list[Row]:
    rows: list[Row] = []
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("| `") or section.startswith(NOT_LONGHORN):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 6, f"{section}: row needs 6 cells: {line}"
        name, kind, labels, _unit, definition, needs = cells
        assert definition, f"{name}: no definition"
        extra = set(re.findall(r"`([a-z_]+)`", labels))
        if section == "Volumes":
            extra |= set(VOLUME_LABELS)
        # A parenthesised need is partial (only some series depend on it).
        needed = set(re.findall(r"`([a-z]+)`", re.sub(r"\(.*?\)", "", needs)))
        if "volume" in extra:
            needed.add("volumes")
        rows.append(Row(section, name.strip("`"), kind, frozenset(extra), frozenset(needed)))
    return rows


def every_path_state(complete: frozenset[str] = ALL) -> tuple[ClusterState, SnapshotChurn]:
    """A simulated cluster with every situation the metrics distinguish, refreshed twice
    so the churn counters exist."""
    spec = ClusterSpec(
        name="every-path",
        volumes=60,
        snapshots_per_volume=5,
        backups_per_volume=4,
        nodes=4,
        disks_per_node=2,
        degraded_volumes=10,
        faulted_volumes=2,
        detached_volumes=5,
        unscheduled_volumes=3,
        too_many_snapshots_volumes=3,
        failing_backups=3,
        stuck_backups=3,
        pending_backups=3,
        overdue_backups=3,
        never_backed_up_volumes=3,
        nodes_down=1,
        disks_under_pressure=1,
        hostile_names=True,
        malformed=True,
    )
    state, churn, _ = reduce_simulated(spec, complete, refreshes=2)
    return state, churn


def emitted(complete: frozenset[str] = ALL) -> dict[str, Family]:
    state, churn = every_path_state(complete)
    return {f.name: f for f in families(state, churn)}


@pytest.fixture(scope="module")
def full() -> dict[str, Family]:
    return emitted()


def test_doc_parses() -> None:
    rows = doc_rows()
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), "a metric is documented twice"
    assert {r.section for r in rows} == {
        "Volumes",
        "Backups",
        "Recurring jobs",
        "Nodes and disks",
        "Cluster",
    }
    assert len(rows) >= 40


def test_code_and_doc_name_the_same_metrics(full: dict[str, Family]) -> None:
    documented = {r.name for r in doc_rows()}
    assert set(full) - documented == set(), "emitted but not in docs/metrics.md"
    assert documented - set(full) == set(), "documented but never emitted"


def test_types_and_labels_match_the_doc(full: dict[str, Family]) -> None:
    for row in doc_rows():
        fam = full[row.name]
        assert fam.type == row.type, row.name
        assert set(fam.labelnames) == row.labels, row.name
        assert len(fam.labelnames) == len(row.labels), f"{row.name}: a label twice"
        assert fam.help.strip(), row.name
        if fam.type == "counter":
            assert fam.name.endswith("_total"), row.name


@pytest.mark.parametrize("resource", sorted(set(RESOURCES) - {"volumes"}))
def test_needs_column(resource: str, full: dict[str, Family]) -> None:
    """Without ``resource``, exactly the metrics that need it disappear."""
    without = emitted(ALL - {resource})
    gone = set(full) - set(without)
    needs = {r.name for r in doc_rows() if resource in r.needs}
    assert gone == needs
    assert set(without) <= set(full)


def test_without_volumes_only_cluster_wide_metrics_remain() -> None:
    left = emitted(ALL - {"volumes"})
    rows = {r.name: r for r in doc_rows()}
    assert {n for n in left if "volumes" in rows[n].needs} == set()
    assert {n for n, r in rows.items() if "volumes" not in r.needs} == set(left)
