"""Longhorn's custom resources as they arrive: typed wire records, page decoding, and the
parsing of values.

Each page is decoded straight from its bytes into small msgspec Structs that declare only
the fields the metrics and the triage page use (a typed decode is ~10x faster and ~10x
leaner than ``json.loads``). Every field is optional: Longhorn versions add and drop
fields, sizes may be a JSON integer, a decimal string or ``""``, status enums are not
enforced by the CRD schema, and v1beta1 objects carry conditions as a map. Strings from the
cluster are untrusted data: they are kept verbatim (escaping is the encoder's job) and
never formatted into markup.
"""

from __future__ import annotations

import functools
import math
import sys
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec
from croniter import croniter
from croniter.croniter import CroniterError
from msgspec import UNSET, UnsetType

from ..config import parse_duration

MAX_TEXT = 500  # cap on free text (condition messages, backup errors) kept for triage


class PageError(ValueError):
    """A list page that is not a Kubernetes List at all (not JSON, not an object, no
    ``items``). One line, no page content beyond a short quoted ``kind``."""


# --------------------------------------------------------------------------- decoding

# Numbers and times are decoded as whatever JSON value arrives: sizes are a JSON integer,
# a decimal string or "" depending on the field and the version, and a value of the wrong
# type must cost only its own sample (``to_number``/``parse_time`` read it), not the object.
Num = Any
Time = Any


class _S(msgspec.Struct, rename="camel", gc=False):
    """Base: camelCase JSON names; no GC tracking (plain data trees, no cycles), which
    keeps decoding big pages from triggering cyclic collections."""


class Cond(_S):
    type: str = ""
    status: str = ""
    reason: str = ""
    message: str = ""


Conds = list[Cond] | dict[str, Cond] | None  # v1beta2 list, v1beta1 map keyed by type


class Meta(_S):
    name: str = ""
    labels: dict[str, str] | None = None
    creation_timestamp: Time = None


class ListMeta(_S):
    continue_: str | None = msgspec.field(default=None, name="continue")
    resource_version: str | None = None


T = TypeVar("T")


class KubeList(_S, Generic[T]):
    kind: str = ""
    metadata: ListMeta | None = None
    items: list[T] | UnsetType | None = UNSET


class KubeStatus(_S):
    pvc_name: str = ""
    namespace: str = ""


class VolumeSpec(_S):
    size: Num = None
    number_of_replicas: Num = None
    frontend: str = ""
    data_engine: str = ""
    access_mode: str = ""
    data_locality: str = ""
    backup_target_name: str | None = None


class VolumeStatus(_S):
    state: str = ""
    robustness: str = ""
    owner_id: str = msgspec.field(default="", name="ownerID")
    current_node_id: str = msgspec.field(default="", name="currentNodeID")
    actual_size: Num = None
    last_backup: str = ""
    last_backup_at: Time = None
    last_degraded_at: Time = None
    is_standby: bool | None = None
    conditions: Conds = None
    kubernetes_status: KubeStatus | None = None


class Volume(_S):
    metadata: Meta | None = None
    spec: VolumeSpec | None = None
    status: VolumeStatus | None = None


class ReplicaSpec(_S):
    volume_name: str = ""
    node_id: str = msgspec.field(default="", name="nodeID")
    failed_at: str | None = None
    active: bool | None = None


class ReplicaStatus(_S):
    current_state: str = ""


class Replica(_S):
    metadata: Meta | None = None
    spec: ReplicaSpec | None = None
    status: ReplicaStatus | None = None


class Rebuild(_S):
    is_rebuilding: bool | None = None
    progress: Num = None


class EngineSpec(_S):
    volume_name: str = ""
    node_id: str = msgspec.field(default="", name="nodeID")
    active: bool | None = None
    replica_address_map: dict[str, str] | None = None


class EngineStatus(_S):
    current_state: str = ""
    replica_mode_map: dict[str, str] | None = None
    current_replica_address_map: dict[str, str] | None = None
    rebuild_status: dict[str, Rebuild | None] | None = None
    conditions: Conds = None


class Engine(_S):
    metadata: Meta | None = None
    spec: EngineSpec | None = None
    status: EngineStatus | None = None


class SnapshotSpec(_S):
    volume: str = ""


class SnapshotStatus(_S):
    creation_time: Time = None
    size: Num = None
    mark_removed: bool | None = None


class Snapshot(_S):
    metadata: Meta | None = None
    spec: SnapshotSpec | None = None
    status: SnapshotStatus | None = None


class BackupStatus(_S):
    state: str = ""
    backup_created_at: Time = None
    size: Num = None
    newly_upload_data_size: Num = None
    volume_name: str = ""
    backup_target_name: str | None = None
    error: str = ""


class Backup(_S):
    metadata: Meta | None = None
    status: BackupStatus | None = None


class BackupVolumeSpec(_S):
    volume_name: str = ""
    backup_target_name: str | None = None


class BackupVolumeStatus(_S):
    last_backup_at: Time = None
    last_backup_name: str = ""


class BackupVolume(_S):
    metadata: Meta | None = None
    spec: BackupVolumeSpec | None = None
    status: BackupVolumeStatus | None = None


class BackupTargetSpec(_S):
    poll_interval: str = ""


class BackupTargetStatus(_S):
    available: bool | None = None
    last_synced_at: Time = None
    conditions: Conds = None


class BackupTarget(_S):
    metadata: Meta | None = None
    spec: BackupTargetSpec | None = None
    status: BackupTargetStatus | None = None


class DiskSpec(_S):
    path: str = ""
    storage_reserved: Num = None


class DiskStatus(_S):
    conditions: Conds = None
    storage_available: Num = None
    storage_maximum: Num = None
    storage_scheduled: Num = None


class NodeSpec(_S):
    allow_scheduling: bool | None = None
    disks: dict[str, DiskSpec | None] | None = None


class NodeStatus(_S):
    conditions: Conds = None
    disk_status: dict[str, DiskStatus | None] | None = None


class Node(_S):
    metadata: Meta | None = None
    spec: NodeSpec | None = None
    status: NodeStatus | None = None


class RecurringJobSpec(_S):
    task: str = ""
    cron: str = ""
    groups: list[str] | None = None
    retain: Num = None
    concurrency: Num = None


class RecurringJobStatus(_S):
    execution_count: Num = None


class RecurringJob(_S):
    metadata: Meta | None = None
    spec: RecurringJobSpec | None = None
    status: RecurringJobStatus | None = None


class Setting(_S):
    metadata: Meta | None = None
    value: str | None = None


_ITEM_TYPES: dict[str, type[_S]] = {
    "volumes": Volume,
    "replicas": Replica,
    "engines": Engine,
    "snapshots": Snapshot,
    "backups": Backup,
    "backupvolumes": BackupVolume,
    "backuptargets": BackupTarget,
    "nodes": Node,
    "recurringjobs": RecurringJob,
    "settings": Setting,
}
# One decoder per list type, built once: Decoder construction is the costly part.
_LIST_DECODERS = {r: msgspec.json.Decoder(KubeList[t]) for r, t in _ITEM_TYPES.items()}
_ITEM_DECODERS = {r: msgspec.json.Decoder(t) for r, t in _ITEM_TYPES.items()}
_RAW_DECODER = msgspec.json.Decoder(KubeList[msgspec.Raw])


def decode_page(resource: str, body: bytes | bytearray) -> tuple[list[Any], int, ListMeta]:
    """Typed fast path; on any mismatch, decode item by item so one bad object does not
    cost the others their metrics. Returns (items, malformed count, list metadata).
    (Public for the benchmark, whose decode-only client is the bound for any exporter
    that reads the objects.)"""
    try:
        page = _LIST_DECODERS[resource].decode(body)
        malformed = 0
    except msgspec.DecodeError:
        try:
            raw = _RAW_DECODER.decode(body)
        except msgspec.ValidationError as e:
            raise PageError(f"not a Kubernetes List: {_short(str(e))}") from None
        except msgspec.DecodeError as e:
            raise PageError(f"not valid JSON: {_short(str(e))}") from None
        _check_list(raw)
        items, malformed = [], 0
        decoder = _ITEM_DECODERS[resource]
        for chunk in raw.items or ():
            try:
                items.append(decoder.decode(chunk))
            except msgspec.DecodeError:
                malformed += 1
        return items, malformed, raw.metadata or ListMeta()
    _check_list(page)
    return list(page.items or ()), malformed, page.metadata or ListMeta()


def _check_list(page: KubeList[Any]) -> None:
    if page.kind and not page.kind.endswith("List"):
        raise PageError(f"not a Kubernetes List: kind {_short(page.kind, 40)!r}")
    if page.items is UNSET:
        raise PageError("not a Kubernetes List: no items field")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- values


def parse_time(value: Time) -> float | None:
    """RFC 3339 (Longhorn's own second-precision UTC stamps, or metav1.Time) to Unix
    seconds. ``""``, ``null``, the string ``"null"``, other types and garbage are None."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except (ValueError, TypeError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH).total_seconds()  # ~25% faster than dt.timestamp()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_number(value: Num) -> float | None:
    """A size or count that may be a JSON number, a decimal string or ``""``; never
    negative (no size or count Longhorn writes is), so a negative one cannot be read.
    (``float`` of a decimal string rounds exactly as ``float(int(...))`` does, and takes
    surrounding spaces; one call instead of three matters at 60,000 objects a refresh.)"""
    if isinstance(value, str):
        if "_" in value:  # float() takes "1_000"; Kubernetes' int64 strings never have it
            return None
        try:
            number = float(value)
        except ValueError:
            return None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:  # None, true/false, an object or a list
        return None
    return number if math.isfinite(number) and number >= 0 else None


@functools.lru_cache(maxsize=256)
def cron_interval(cron: str) -> float | None:
    """The longest gap between two consecutive runs of a cron schedule, in seconds, over
    its next ``CRON_RUNS`` runs (or a year, whichever ends first), so that nothing is
    called overdue between two scheduled runs (a weekdays-only daily job: 3 days). Longhorn
    accepts the standard five fields and the ``@daily``-style descriptors (croniter reads
    both), and ``@every <duration>``. None when it cannot be read."""
    cron = cron.strip()
    if cron.startswith("@every "):
        try:
            seconds = parse_duration(cron.removeprefix("@every ").strip(), "cron")
        except ValueError:
            return None
        return seconds if seconds > 0 else None
    try:
        runs = croniter(cron, CRON_ANCHOR)
        previous = runs.get_next(float)
        longest = 0.0
        for _ in range(CRON_RUNS):
            run = runs.get_next(float)
            longest = max(longest, run - previous)
            if run - CRON_ANCHOR.timestamp() > 366 * 86400:
                break
            previous = run
    except (CroniterError, ValueError, KeyError, TypeError, OverflowError):
        return None
    return longest or None


# A Monday at midnight UTC; Longhorn's recurring jobs run as Kubernetes CronJobs, in UTC.
CRON_ANCHOR = datetime(2001, 1, 1, tzinfo=UTC)
# Enough runs to see a week's pattern for anything hourly or slower (~20 ms, once a job).
CRON_RUNS = 400
intern = sys.intern  # enum-like strings repeat on every object: keep one copy of each


def clip_text(value: str | None) -> str:
    value = value or ""
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


def label_of(meta: Meta | None, key: str) -> str:
    if meta is None or not meta.labels:
        return ""
    return meta.labels.get(key) or ""
