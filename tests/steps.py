"""Run the refresh path's stepwise code straight through, in the order the prober runs it,
for tests that reduce pages and build families without an event loop."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from fleet_exporter.exposition import Encoded, Family, Writer
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


def encoded(state: ClusterState, churn: SnapshotChurn, cluster: str = "c") -> list[Encoded]:
    """Every Longhorn family of the catalogue, group by group, as the prober builds them."""
    w = Writer(cluster)
    return [f for join in JOINS for f in drain(building_group(join, state, churn, w))]


def exposition(
    state: ClusterState, churn: SnapshotChurn, cluster: str = "c", openmetrics: bool = False
) -> str:
    """The catalogue's text, as a probe would serve it (without the probe's head)."""
    return "".join(
        (f.openmetrics_meta if openmetrics else f.text_meta) + f.samples
        for f in encoded(state, churn, cluster)
    )


def families(state: ClusterState, churn: SnapshotChurn, cluster: str = "c") -> list[Family]:
    """The catalogue's text read back by prometheus_client's parser, as ``Family``s (a
    counter named with its ``_total``; ``cluster`` checked and left out of the labels)."""
    out = []
    for parsed in text_string_to_metric_families(exposition(state, churn, cluster)):
        name = parsed.name + "_total" if parsed.type == "counter" else parsed.name
        labelnames: tuple[str, ...] = ()
        samples = []
        for s in parsed.samples:
            labels = dict(s.labels)
            assert labels.pop("cluster") == cluster
            labelnames = labelnames or tuple(labels)
            assert tuple(labels) == labelnames, f"{name}: labels differ between samples"
            samples.append((tuple(labels.values()), s.value))
        out.append(Family(name, parsed.type, parsed.documentation, labelnames, samples))
    return out
