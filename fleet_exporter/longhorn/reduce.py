"""Pages folded into records as they arrive, and the joins.

A refresh lists ten resources, page by page. Each page is reduced at once into
per-resource aggregates, so the raw page can be dropped and memory stays bounded page by
page. The joins then put replicas, engines and volumes together by volume name, snapshots
and backups by volume, backups by (volume, backup target), using only the resources that
listed completely: a resource that failed midway is ignored entirely, so its metrics are
omitted rather than wrong.

A value that is absent (missing, null, ``""``) is None in the records, and so is one that
cannot be read; the latter is also counted (``PageInfo.unreadable``), for the debug output
and ``longhorn_exporter_unreadable_values``. Nothing is ever read as 0 because it could
not be read.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..knobs import STEP
from . import Join, wire
from .health import count_replicas, volume_healthy
from .records import (
    BACKUP_IN_PROGRESS,
    BACKUP_STATE_OF,
    BACKUP_TASKS,
    DEFAULT_BACKUP_TARGET,
    DEFAULT_JOB_GROUP,
    NODE_REPLICA_STATES,
    ROBUSTNESS,
    TRIAGE_SETTINGS,
    BackupStats,
    BackupTargetState,
    BackupVolumeState,
    ClusterState,
    Condition,
    DiskState,
    EngineRec,
    NodeState,
    RecurringJobState,
    ReplicaView,
    SnapshotStats,
    VolumeState,
    condition,
)
from .wire import (
    PageError,
    clip_text,
    cron_interval,
    decode_page,
    intern,
    label_of,
    parse_time,
    to_number,
)

JOB_LABEL = "recurring-job.longhorn.io/"
GROUP_LABEL = "recurring-job-group.longhorn.io/"


@dataclass(slots=True, frozen=True)
class PageInfo:
    """What one page held: objects reduced, objects skipped because they did not decode
    (or had no name), values that could not be read (their samples are absent), and the
    list metadata needed to fetch the next page."""

    items: int
    malformed: int
    unreadable: int
    continue_token: str
    resource_version: str


def _conditions(raw: wire.Conds) -> tuple[Condition, ...]:
    """Normalise list- or map-shaped conditions; one per type (the last one wins)."""
    if not raw:
        return ()
    pairs: Iterable[tuple[str, wire.Cond | None]]
    pairs = raw.items() if isinstance(raw, dict) else (("", c) for c in raw)
    out: dict[str, Condition] = {}
    for key, c in pairs:
        if c is None or not (c.type or key):
            continue
        ctype = c.type or key
        # Metrics lowercase the type (as Longhorn's exporter does): dedupe on that.
        out[ctype.lower()] = Condition(
            intern(ctype), intern(c.status), intern(c.reason), clip_text(c.message)
        )
    return tuple(out.values())


def _job_labels(meta: wire.Meta) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The recurring jobs and job groups a volume's labels enable; None without any."""
    labels = meta.labels
    if not labels:
        return None
    jobs = tuple(
        sorted(
            k[len(JOB_LABEL) :]
            for k, v in labels.items()
            if k.startswith(JOB_LABEL) and v == "enabled"
        )
    )
    groups = tuple(
        sorted(
            k[len(GROUP_LABEL) :]
            for k, v in labels.items()
            if k.startswith(GROUP_LABEL) and v == "enabled"
        )
    )
    return (jobs, groups) if jobs or groups else None


_NO_SNAPSHOT_STATUS = wire.SnapshotStatus()
_NO_BACKUP_STATUS = wire.BackupStatus()


class ClusterReducer:
    """Reduces list pages into small per-resource aggregates as they arrive, then joins
    them. Not thread-safe; one reducer per refresh."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now
        self._volumes: dict[str, VolumeState] = {}
        self._replicas: dict[str, dict[str, ReplicaView]] = {}
        self._engines: dict[str, dict[str, EngineRec]] = {}
        self._snapshots: dict[str, SnapshotStats] = {}
        self._backups: dict[tuple[str, str], BackupStats] = {}
        self._backup_volumes: dict[tuple[str, str], BackupVolumeState] = {}
        self._targets: dict[str, BackupTargetState] = {}
        self._nodes: dict[str, NodeState] = {}
        self._jobs: dict[str, RecurringJobState] = {}
        self._settings: dict[str, str] = {}
        self._node_replicas: dict[str, dict[str, int]] = {}
        self._volumes_sorted: dict[str, VolumeState] | None = None
        self._backups_joined: dict[tuple[str, str], BackupStats] | None = None
        self._unreadable = 0  # in the page being reduced
        self._page_starts: dict[str, set[str]] = {}  # the first object of each page, by list

    def adding_page(
        self, resource: str, body: bytes | bytearray
    ) -> Generator[None, None, PageInfo]:
        """Decode one page of ``resource`` and fold it in, in steps: the decode, then ``STEP``
        objects at a time (a page of 500 engines is ~15 ms of work). Raises PageError for a
        page that is not a List, ValueError for a resource not in RESOURCES."""
        # Looked up per page, not kept as bound methods in a dict on the reducer: that
        # made a reference cycle, so every refresh's records (tens of MB for a big
        # cluster) waited for a full garbage collection instead of going at once.
        method = _REDUCE.get(resource)
        if method is None:
            raise ValueError(f"unknown Longhorn resource {resource!r}")
        reduce = getattr(self, method)
        items, malformed, meta = decode_page(resource, body)
        self._check_no_loop(resource, items)
        self._unreadable = 0
        good = 0
        for start in range(0, len(items), STEP):
            if start:
                yield
            for obj in items[start : start + STEP]:
                if obj.metadata is None or not obj.metadata.name:
                    malformed += 1  # an object without a name cannot be joined or labelled
                    continue
                reduce(obj)
                good += 1
        return PageInfo(
            good, malformed, self._unreadable, meta.continue_ or "", meta.resource_version or ""
        )

    def _check_no_loop(self, resource: str, items: list[Any]) -> None:
        """A list is one consistent snapshot: no object comes twice. A server whose
        continue tokens go round in circles serves the same objects again, page after
        page, up to ``max_pages``; caught here when a page starts with an object an
        earlier page started with, after one round at most, instead of a thousand pages
        of CPU and memory later."""
        first = items[0].metadata.name if items and items[0].metadata else None
        if not first:
            return
        starts = self._page_starts.setdefault(resource, set())
        if first in starts:
            raise PageError(
                f"{_short_name(first)} starts a page again: the continue tokens go round in circles"
            )
        starts.add(first)

    # -- values: absent is None; unreadable is None and counted

    def _num(self, raw: wire.Num) -> float | None:
        if raw is None or raw == "":
            return None
        value = to_number(raw)
        if value is None:
            self._unreadable += 1
        return value

    def _int(self, raw: wire.Num) -> int | None:
        value = self._num(raw)
        return None if value is None else int(value)

    def _time(self, raw: wire.Time) -> float | None:
        if not raw or raw == "null":  # Longhorn writes the string "null" for never
            return None
        value = parse_time(raw)
        if value is None:
            self._unreadable += 1
        return value

    def _time_or_never(self, raw: wire.Time) -> float | None:
        """A "last ... at" field: ``""`` or ``"null"`` means never (0); garbage is unknown
        (None)."""
        return 0.0 if not raw or raw == "null" else self._time(raw)

    # -- per resource: keep only what the metrics and the triage page need

    def _volume(self, v: wire.Volume) -> None:
        meta, spec, st = v.metadata, v.spec or wire.VolumeSpec(), v.status or wire.VolumeStatus()
        assert meta is not None
        kube = st.kubernetes_status or wire.KubeStatus()
        robustness = st.robustness if st.robustness in ROBUSTNESS else "unknown"
        self._volumes[meta.name] = VolumeState(
            name=meta.name,
            pvc=kube.pvc_name,
            pvc_namespace=intern(kube.namespace),
            node=intern(st.owner_id),
            attached_node=intern(st.current_node_id),
            state=intern(st.state),
            robustness=intern(robustness),
            frontend=intern(spec.frontend),
            data_engine=intern(spec.data_engine),
            access_mode=intern(spec.access_mode),
            data_locality=intern(spec.data_locality),
            backup_target=intern(spec.backup_target_name or label_of(meta, "backup-target")),
            number_of_replicas=self._int(spec.number_of_replicas),
            capacity=self._num(spec.size),
            actual_size=self._num(st.actual_size),
            created=self._time(meta.creation_timestamp),
            last_backup_at=self._time_or_never(st.last_backup_at),
            last_degraded_at=self._time(st.last_degraded_at),
            conditions=_conditions(st.conditions),
            job_labels=_job_labels(meta),
        )

    def _replica(self, r: wire.Replica) -> None:
        meta, spec, st = r.metadata, r.spec or wire.ReplicaSpec(), r.status or wire.ReplicaStatus()
        assert meta is not None
        volume = spec.volume_name or label_of(meta, "longhornvolume")
        self._replicas.setdefault(volume, {})[meta.name] = ReplicaView(
            name=meta.name,
            node=intern(spec.node_id),
            failed_at=spec.failed_at or "",
            state=intern(st.current_state),
            active=spec.active is not False,  # absent on old versions: every replica counts
        )

    def _engine(self, e: wire.Engine) -> None:
        meta, spec, st = e.metadata, e.spec or wire.EngineSpec(), e.status or wire.EngineStatus()
        assert meta is not None
        volume = spec.volume_name or label_of(meta, "longhornvolume")
        rebuilding: dict[str, float | None] = {}
        for addr, rs in (st.rebuild_status or {}).items():
            if rs is not None and rs.is_rebuilding:
                progress = self._num(rs.progress)
                rebuilding[addr.removeprefix("tcp://")] = (
                    None if progress is None else min(max(progress / 100.0, 0.0), 1.0)
                )
        ro = condition(_conditions(st.conditions), "FilesystemReadOnly")
        self._engines.setdefault(volume, {})[meta.name] = EngineRec(
            name=meta.name,
            node=spec.node_id,
            active=spec.active is not False,
            state=st.current_state,
            modes={k: intern(v) for k, v in (st.replica_mode_map or {}).items()},
            addresses=dict(st.current_replica_address_map or spec.replica_address_map or {}),
            rebuilding=rebuilding,
            read_only=ro is not None and ro.true,
        )

    def _snapshot(self, s: wire.Snapshot) -> None:
        # The hottest path of a refresh (20 snapshots per volume is common): written out.
        meta = s.metadata
        assert meta is not None
        name = meta.name
        if name == "volume-head":
            return
        spec = s.spec
        volume = (spec.volume if spec is not None else "") or label_of(meta, "longhornvolume")
        stats = self._snapshots.get(volume)
        if stats is None:
            stats = self._snapshots[volume] = SnapshotStats()
        st = s.status or _NO_SNAPSHOT_STATUS
        if st.mark_removed:
            stats.removed += 1
            return
        created = st.creation_time
        ident = hash((name, created if isinstance(created, str) else ""))
        ids = stats.ids
        assert isinstance(ids, set), "snapshot stats are frozen once joined"
        if ident in ids:  # the same snapshot on two pages of a list that moved meanwhile
            return
        ids.add(ident)
        stats.count += 1
        size = st.size
        if type(size) is not int or size < 0:  # the common case, without a call
            size = self._num(size)
        if size is None:
            stats.size_bytes = None
        elif stats.size_bytes is not None:
            stats.size_bytes += size
        when = self._time(created)
        if when is not None:
            if stats.oldest is None or when < stats.oldest:
                stats.oldest = when
            if stats.newest is None or when > stats.newest:
                stats.newest = when

    def _backup(self, b: wire.Backup) -> None:
        meta = b.metadata
        assert meta is not None
        st = b.status or _NO_BACKUP_STATUS
        volume = label_of(meta, "backup-volume") or st.volume_name
        target = st.backup_target_name or label_of(meta, "backup-target") or DEFAULT_BACKUP_TARGET
        stats = self._backups.get((volume, target))
        if stats is None:
            stats = self._backups[(volume, target)] = BackupStats()
        name = meta.name
        created = self._time(meta.creation_timestamp)
        state = BACKUP_STATE_OF.get(st.state, "Unknown")
        stats.counts[state] += 1
        done = self._time(st.backup_created_at)
        when = done if done is not None else created
        if when is not None and (stats.newest_key is None or (when, name) > stats.newest_key):
            stats.newest_key = (when, name)
            stats.newest_state, stats.newest_error = state, clip_text(st.error)
        if created is not None:
            if state in BACKUP_IN_PROGRESS and (
                stats.oldest_in_progress is None or created < stats.oldest_in_progress
            ):
                stats.oldest_in_progress = created
            if state == "Error" and (stats.last_failure is None or created > stats.last_failure):
                stats.last_failure = created
        if state != "Completed":
            return
        if when is None:  # completed, but when cannot be read: unknown, not never
            stats.completed_unknown = True
            return
        if stats.last_success is None or when > stats.last_success:
            stats.last_success, stats.last_success_name = when, name
            stats.last_size = self._num(st.size)
            stats.last_uploaded = self._num(st.newly_upload_data_size)
        if (
            done is not None
            and created is not None
            and created <= done
            and (stats.last_local is None or done > stats.last_local)
        ):
            stats.last_local, stats.last_latency = done, done - created

    def _backup_volume(self, bv: wire.BackupVolume) -> None:
        meta = bv.metadata
        spec, st = bv.spec or wire.BackupVolumeSpec(), bv.status or wire.BackupVolumeStatus()
        assert meta is not None
        # Before v1.8 the CR was named after the volume; since then <volume>-<hash>.
        volume = spec.volume_name or label_of(meta, "backup-volume") or meta.name
        target = spec.backup_target_name or label_of(meta, "backup-target") or DEFAULT_BACKUP_TARGET
        self._backup_volumes[(volume, target)] = BackupVolumeState(
            self._time_or_never(st.last_backup_at), st.last_backup_name
        )

    def _backup_target(self, t: wire.BackupTarget) -> None:
        meta = t.metadata
        spec, st = t.spec or wire.BackupTargetSpec(), t.status or wire.BackupTargetStatus()
        assert meta is not None
        self._targets[meta.name] = BackupTargetState(
            name=meta.name,
            available=st.available,
            last_synced=self._time_or_never(st.last_synced_at),
            poll_interval=spec.poll_interval,
            conditions=_conditions(st.conditions),
        )

    def _node(self, n: wire.Node) -> None:
        meta, spec, st = n.metadata, n.spec or wire.NodeSpec(), n.status or wire.NodeStatus()
        assert meta is not None
        disks: list[DiskState] = []
        # As Longhorn's exporter: the disks configured in spec, with their status; none
        # at all while the node has no disk status yet.
        if st.disk_status is not None:
            for name, dspec in sorted((spec.disks or {}).items()):
                dspec = dspec or wire.DiskSpec()
                dst = st.disk_status.get(name) or wire.DiskStatus()
                disks.append(
                    DiskState(
                        name=name,
                        path=dspec.path,
                        capacity=self._num(dst.storage_maximum),
                        available=self._num(dst.storage_available),
                        scheduled=self._num(dst.storage_scheduled),
                        reserved=self._num(dspec.storage_reserved),
                        conditions=_conditions(dst.conditions),
                    )
                )
        self._nodes[meta.name] = NodeState(
            name=meta.name,
            allow_scheduling=spec.allow_scheduling,
            conditions=_conditions(st.conditions),
            disks=tuple(disks),
        )

    def _recurring_job(self, j: wire.RecurringJob) -> None:
        meta = j.metadata
        spec, st = j.spec or wire.RecurringJobSpec(), j.status or wire.RecurringJobStatus()
        assert meta is not None
        interval = cron_interval(spec.cron) if spec.cron else None
        if spec.cron and interval is None:
            self._unreadable += 1
        self._jobs[meta.name] = RecurringJobState(
            name=meta.name,
            task=spec.task,
            groups=tuple(sorted(set(spec.groups or ()))),
            cron=spec.cron,
            retain=self._int(spec.retain),
            concurrency=self._int(spec.concurrency),
            executions=self._num(st.execution_count),
            interval=interval,
        )

    def _setting(self, s: wire.Setting) -> None:
        assert s.metadata is not None
        if s.metadata.name in TRIAGE_SETTINGS:
            self._settings[s.metadata.name] = clip_text(s.value)

    # -- join

    def joining(self, join: Join, complete: frozenset[str]) -> Generator[None, None, ClusterState]:
        """Join one group of lists (``complete``: those of ``join.lists`` that listed
        completely) into the volumes, once all of them have ended, and return the state
        that group's metrics need. Each join writes its own fields of the shared
        ``VolumeState``s, so the groups can be joined in any order, while other lists are
        still arriving; ``state`` then puts them together. In steps of ``STEP`` volumes."""
        volumes = self._sorted_volumes() if "volumes" in complete else {}
        backups: dict[tuple[str, str], BackupStats] = {}
        if join.name == "volumes":
            yield from self._join_replicas_engines(volumes, complete)
        elif join.name == "snapshots" and "snapshots" in complete:
            yield from self._join_snapshots(volumes)
        elif join.name == "backups" and "backups" in complete:
            backups = self._joined_backups(volumes)
        elif join.name == "recurringjobs" and "recurringjobs" in complete:
            yield from self._join_recurring_jobs(volumes)
        return self._state(complete, volumes, backups)

    def state(self, complete: frozenset[str]) -> ClusterState:
        """Every joined group together (call ``joining`` for each of ``JOINS`` first)."""
        volumes = self._sorted_volumes() if "volumes" in complete else {}
        backups = (self._backups_joined or {}) if "backups" in complete else {}
        return self._state(complete, volumes, backups)

    def _sorted_volumes(self) -> dict[str, VolumeState]:
        if self._volumes_sorted is None:
            self._volumes_sorted = dict(sorted(self._volumes.items()))
        return self._volumes_sorted

    def _join_replicas_engines(
        self, volumes: dict[str, VolumeState], complete: frozenset[str]
    ) -> Iterator[None]:
        with_replicas = "replicas" in complete
        with_engines = "engines" in complete
        per_node = self._node_replicas
        for i, vs in enumerate(volumes.values()):
            if i % STEP == STEP - 1:
                yield
            replicas = self._replicas.get(vs.name, {}) if with_replicas else None
            engine = _pick_engine(self._engines.get(vs.name, {}), vs) if with_engines else None
            if with_engines:
                vs.read_only = engine is not None and engine.read_only
                if engine is not None and engine.rebuilding:
                    known = [p for p in engine.rebuilding.values() if p is not None]
                    vs.rebuild_progress = min(known) if known else None
            if replicas is not None:
                count_replicas(vs, replicas, engine, with_engines)
                if with_engines:
                    for r in vs.replica_views:
                        if r.active and r.node and r.health != "unscheduled":
                            counts = per_node.get(r.node)
                            if counts is None:
                                counts = per_node[r.node] = dict.fromkeys(NODE_REPLICA_STATES, 0)
                            counts[r.health or "stopped"] += 1
            vs.healthy = volume_healthy(vs)

    def _join_snapshots(self, volumes: dict[str, VolumeState]) -> Iterator[None]:
        for i, vs in enumerate(volumes.values()):
            if i % STEP == STEP - 1:
                yield
            snaps = vs.snapshots = self._snapshots.get(vs.name) or SnapshotStats()
            if isinstance(snaps.ids, set):
                snaps.ids = array("q", sorted(snaps.ids)).tobytes()

    def _joined_backups(
        self, volumes: dict[str, VolumeState]
    ) -> dict[tuple[str, str], BackupStats]:
        if self._backups_joined is None:
            backups = {k: v for k, v in sorted(self._backups.items()) if k[0] in volumes}
            for (volume, _), stats in backups.items():
                vs = volumes[volume]
                vs.backup_time_unknown = vs.backup_time_unknown or stats.completed_unknown
                if stats.last_success is not None and (
                    vs.backup_last_success is None or stats.last_success > vs.backup_last_success
                ):
                    vs.backup_last_success = stats.last_success
            self._backups_joined = backups
        return self._backups_joined

    def _join_recurring_jobs(self, volumes: dict[str, VolumeState]) -> Iterator[None]:
        """Each volume's backup interval: the shortest among the backup jobs that apply to
        it, by its job labels, its group labels, or the ``default`` group without any."""
        backup_jobs = [j for j in self._jobs.values() if j.task in BACKUP_TASKS]
        by_name = {j.name: j.interval for j in backup_jobs}
        by_group: dict[str, list[float | None]] = {}
        for j in backup_jobs:
            for group in j.groups:
                by_group.setdefault(group, []).append(j.interval)
        default = by_group.get(DEFAULT_JOB_GROUP, [])
        for i, vs in enumerate(volumes.values()):
            if i % STEP == STEP - 1:
                yield
            if vs.job_labels is None:
                intervals = default
            else:
                jobs, groups = vs.job_labels
                intervals = [by_name[j] for j in jobs if j in by_name]
                for group in groups:
                    intervals += by_group.get(group, ())
            known = [x for x in intervals if x is not None]
            vs.backup_interval = min(known) if known else None

    def _state(
        self,
        complete: frozenset[str],
        volumes: dict[str, VolumeState],
        backups: dict[tuple[str, str], BackupStats],
    ) -> ClusterState:
        return ClusterState(
            now=self.now,
            complete=frozenset(complete),
            volumes=volumes,
            backups=backups,
            backup_volumes=(
                {k: v for k, v in sorted(self._backup_volumes.items()) if k[0] in volumes}
                if "backupvolumes" in complete
                else {}
            ),
            backup_targets=(
                dict(sorted(self._targets.items())) if "backuptargets" in complete else {}
            ),
            nodes=dict(sorted(self._nodes.items())) if "nodes" in complete else {},
            recurring_jobs=(
                dict(sorted(self._jobs.items())) if "recurringjobs" in complete else {}
            ),
            settings=dict(self._settings) if "settings" in complete else {},
            node_replicas=self._node_replicas,
        )


_REDUCE = {
    "volumes": "_volume",
    "replicas": "_replica",
    "engines": "_engine",
    "snapshots": "_snapshot",
    "backups": "_backup",
    "backupvolumes": "_backup_volume",
    "backuptargets": "_backup_target",
    "nodes": "_node",
    "recurringjobs": "_recurring_job",
    "settings": "_setting",
}


def _short_name(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _pick_engine(engines: dict[str, EngineRec], vs: VolumeState) -> EngineRec | None:
    """The volume's active engine (``spec.active``); during a migration there can be two,
    then the one on the attached node; ties broken by name so the choice is stable."""
    if not engines:
        return None
    candidates = [e for e in engines.values() if e.active] or list(engines.values())
    candidates.sort(key=lambda e: (e.node != vs.attached_node, e.name))
    return candidates[0]
