"""Run the refresh path's stepwise code straight through, in the order the prober runs it,
for tests that reduce pages and build families without an event loop."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

from fleet_exporter.exposition import Family
from fleet_exporter.longhorn import JOINS
from fleet_exporter.longhorn.catalogue import building_group
from fleet_exporter.longhorn.churn import SnapshotChurn
from fleet_exporter.longhorn.records import ClusterState
from fleet_exporter.longhorn.reduce import ClusterReducer, PageInfo

R = TypeVar("R")


def drain(steps: Generator[None, None, R]) -> R:
    """A stepwise computation, run through in one go."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def add_page(reducer: ClusterReducer, resource: str, body: bytes) -> PageInfo:
    return drain(reducer.adding_page(resource, body))


def finish(reducer: ClusterReducer, complete: frozenset[str]) -> ClusterState:
    """Every group joined, as the prober does once each group's lists have ended."""
    for join in JOINS:
        drain(reducer.joining(join, complete & join.lists))
    return reducer.state(complete)


def families(state: ClusterState, churn: SnapshotChurn) -> list[Family]:
    """Every Longhorn family of the catalogue, group by group."""
    return [f for join in JOINS for f in drain(building_group(join, state, churn))]
