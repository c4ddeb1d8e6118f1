"""Absent, never invented (issue 18): every number and timestamp an object carries, made
unreadable in turn, costs only the samples that read it. The object stays, its other
samples stay, the refresh counts the value as unreadable, and no sample becomes 0 or NaN
in its place. The fields are found by walking a simulated cluster's real objects, so a
field the catalogue starts reading later is covered without editing this list."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_exporter.longhorn import RESOURCES
from fleet_exporter.longhorn.reduce import ClusterReducer
from simulator.fleet import ClusterSpec
from simulator.objects import build_cluster
from tests.steps import add_page, finish
from tests.test_longhorn import ALL, NOW, page
from tests.test_metrics import render

SPEC = ClusterSpec(
    name="m",
    volumes=4,
    nodes=2,
    snapshots_per_volume=2,
    backups_per_volume=2,
    degraded_volumes=1,
    detached_volumes=1,
    seed=3,
)
OBJECTS = build_cluster(SPEC, now=NOW).items
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every number, numeric string and RFC 3339 time in an object."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric or (isinstance(value, str) and (value.isdigit() or TIME.match(value))):
        return [path]
    return []


def _fields() -> list[tuple[str, tuple]]:
    out = []
    for resource in RESOURCES:
        items = OBJECTS[resource]
        if items:
            out += [
                (resource, p)
                for p in _leaves(items[0])
                if p[:1] != ("metadata",) or p[-1] == "creationTimestamp"
            ]
    return out


FIELDS = _fields()
# What a broken or hostile API server could send where a number or a time belongs. ("" is
# no garbage: Longhorn writes it for a value not set yet, which is absent or, for a "last
# ... at" field, never; test_longhorn covers it.)
GARBAGE = st.sampled_from(["garbage", "NaN", "-1", "1e999", {"x": 1}, [1], True, -5, "2026-13-45"])


def _state(objects: dict[str, list[dict]]) -> tuple[dict, tuple[int, int, int]]:
    reducer = ClusterReducer(now=NOW)
    counts = [0, 0, 0]
    for resource in RESOURCES:
        info = add_page(reducer, resource, page(objects[resource]))
        counts[0] += info.items
        counts[1] += info.malformed
        counts[2] += info.unreadable
    return render(finish(reducer, ALL)), tuple(counts)


BASELINE, BASE_COUNTS = _state(OBJECTS)


def test_the_walk_finds_the_fields_the_catalogue_reads() -> None:
    found = {(r, p[-1]) for r, p in FIELDS}
    for field in [
        ("volumes", "size"),
        ("volumes", "actualSize"),
        ("volumes", "numberOfReplicas"),
        ("backups", "backupCreatedAt"),
        ("nodes", "storageMaximum"),
        ("snapshots", "size"),
        ("volumes", "creationTimestamp"),
    ]:
        assert field in found, field
    assert BASE_COUNTS[1:] == (0, 0)


@pytest.mark.parametrize(
    ("resource", "path"), FIELDS, ids=[f"{r}.{'.'.join(map(str, p))}" for r, p in FIELDS]
)
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bad=GARBAGE)
def test_an_unreadable_value_costs_only_its_own_samples(
    resource: str, path: tuple, bad: Any
) -> None:
    objects = copy.deepcopy(OBJECTS)
    node = objects[resource][0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    samples, (items, malformed, unreadable) = _state(objects)
    # The object stays: no object is skipped for one bad number or time.
    assert (items, malformed) == (BASE_COUNTS[0], 0)
    changed = {k for k in samples.keys() | BASELINE.keys() if samples.get(k) != BASELINE.get(k)}
    if changed:  # the value was read: the refresh says it could not be
        assert unreadable >= 1, sorted(changed)[:5]
    for key in changed:
        value = samples.get(key)
        assert value is None or not math.isnan(value), key
        # Never 0 in place of what could not be read: a sample that changed either went
        # away, or follows from what was read (a count, a state) and is not a default.
        if value == 0 and BASELINE.get(key) not in (None, 0):
            pytest.fail(
                f"{key} became 0 (was {BASELINE.get(key)}) when {resource}.{path} = {bad!r}"
            )
        if value == 0 and key not in BASELINE:
            pytest.fail(f"{key} appeared as 0 when {resource}.{path} = {bad!r}")


def test_a_completed_backup_whose_times_cannot_be_read_is_unknown_not_never() -> None:
    """Every backup of one volume Completed but with no readable time: when the volume
    was last backed up is unknown (absent), not "never" (0), which would fire
    LonghornBackupOverdue and LonghornVolumeNeverBackedUp."""
    objects = copy.deepcopy(OBJECTS)
    volume = objects["backups"][0]["status"]["volumeName"]
    mine = [b for b in objects["backups"] if b["status"]["volumeName"] == volume]
    assert mine and all(b["status"]["state"] == "Completed" for b in mine)
    for b in mine:
        b["status"]["backupCreatedAt"] = "garbage"
        b["metadata"]["creationTimestamp"] = {"x": 1}
    samples, (_, malformed, unreadable) = _state(objects)
    assert malformed == 0 and unreadable >= 2 * len(mine)
    for name in (
        "longhorn_backup_last_success_timestamp_seconds",
        "longhorn_volume_last_backup_timestamp_seconds",
    ):
        mine_series = [k for k in samples if k[0] == name and ("volume", volume) in k[1]]
        base_series = [k for k in BASELINE if k[0] == name and ("volume", volume) in k[1]]
        assert base_series and not mine_series, name
