"""Longhorn's custom resources, from list pages to metrics.

``wire`` decodes a page into typed records holding only the fields used; ``reduce`` folds
each page into small per-resource aggregates as it arrives and joins them into a
``records.ClusterState``; ``health`` says what is healthy, once, for the metrics, the
pages and the CLI; ``churn`` follows snapshots between refreshes; ``catalogue`` turns a
state into the metric families of docs/metrics.md; ``triage`` into the on-call view.

This module names what is listed, and how the lists group: as soon as every list of a
``Join`` has ended, that group can be joined and rendered while the others still arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

RESOURCES: tuple[str, ...] = (
    "volumes",
    "replicas",
    "engines",
    "snapshots",
    "backups",
    "backupvolumes",
    "backuptargets",
    "nodes",
    "recurringjobs",
    "settings",
)
CORE_RESOURCES: tuple[str, ...] = ("volumes", "nodes")


@dataclass(frozen=True, slots=True)
class Join:
    """A group of lists whose metrics can be built once all of them have ended, while
    the other lists are still arriving. A refresh's tail (after its last page) is then
    only the last group's join and metrics, not everything's."""

    name: str
    lists: frozenset[str]


JOINS: tuple[Join, ...] = (
    # nodes too: replicas per node are counted for every node, 0 where there are none
    Join("volumes", frozenset({"volumes", "replicas", "engines", "nodes"})),
    Join("snapshots", frozenset({"volumes", "snapshots"})),
    Join("backups", frozenset({"volumes", "backups", "backupvolumes", "backuptargets"})),
    Join("recurringjobs", frozenset({"volumes", "recurringjobs"})),
    Join("nodes", frozenset({"nodes"})),
    Join("settings", frozenset({"settings"})),
)
