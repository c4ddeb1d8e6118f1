"""Recent probes of one cluster, for the triage page and ``/probe?debug`` after the fact.

Like blackbox_exporter's history: the last ``limit`` probes, plus up to ``limit`` older
failures that were pushed out by newer probes, so a failure at 03:00 is still there at
03:20 when someone looks. Unlike blackbox, entries carry their time and duration, and the
newest comes first.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    id: int
    time: float  # wall clock at the start of the probe
    duration: float
    timeout: float
    success: bool
    source: str  # hit, miss, stale, timeout
    error: str | None
    log: str  # what the probe did, as ?debug=true shows it (no metrics)


def new_id() -> int:
    return next(_ids)


class History:
    def __init__(self, limit: int):
        self._recent: deque[ProbeRecord] = deque(maxlen=limit)
        self._failures: deque[ProbeRecord] = deque(maxlen=limit)

    def add(self, record: ProbeRecord) -> None:
        recent = self._recent
        if recent.maxlen and len(recent) == recent.maxlen and not recent[0].success:
            self._failures.append(recent[0])
        recent.append(record)

    def records(self) -> list[ProbeRecord]:
        """Newest first."""
        return sorted([*self._recent, *self._failures], key=lambda r: r.id, reverse=True)
