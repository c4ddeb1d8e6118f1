"""Snapshot churn: snapshots created and removed per volume between refreshes."""

from __future__ import annotations

from array import array

from .records import ClusterState


class SnapshotChurn:
    """Snapshots created and removed per volume since the exporter started, from
    comparing the snapshot identities of successive refreshes (hashes of name and
    creation time; no names kept). A volume's counters start at 0 the first time its
    snapshots are seen, so the first refresh only sets the baseline. A refresh whose
    snapshot or volume list was incomplete changes nothing; counters of volumes that are
    gone are dropped."""

    def __init__(self) -> None:
        self._seen: dict[str, bytes] = {}
        self.created: dict[str, int] = {}
        self.removed: dict[str, int] = {}

    def update(self, state: ClusterState) -> None:
        if not state.has("volumes", "snapshots"):
            return
        seen: dict[str, bytes] = {}
        for name, vs in state.volumes.items():
            ids = vs.snapshots.ids if vs.snapshots else b""
            assert isinstance(ids, bytes), "churn needs finished snapshot stats"
            seen[name] = ids
            before = self._seen.get(name)
            if before is None:
                self.created[name] = self.removed[name] = 0
            elif before != ids:  # sorted ids: equal bytes means no change
                now, then = set(array("q", ids)), set(array("q", before))
                self.created[name] += len(now - then)
                self.removed[name] += len(then - now)
        self._seen = seen
        for gone in [n for n in self.created if n not in seen]:
            del self.created[gone], self.removed[gone]
