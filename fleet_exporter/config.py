"""The clusters directory: which files are clusters, and how each is probed.

Which files are clusters. A regular file (or a symlink to one, as in a Kubernetes Secret or
ConfigMap volume) named ``NAME.yaml``, ``NAME.yml`` or ``NAME.kubeconfig`` is the cluster
NAME, unless:

- it is ``fleet.yaml``: the settings, read as described below;
- its name starts with a dot: hidden files, editors' swap files, and the ``..data`` and
  ``..<timestamp>`` entries kubelet keeps in a mounted volume;
- NAME is ``fleet`` or starts with ``fleet.`` (``fleet.yml``, ``fleet.example.yaml``,
  ``fleet.old.yaml``): reserved for settings files, of which only ``fleet.yaml`` is read;
- NAME is ``example`` or ``sample``, or ends in ``.example`` or ``.sample``;
- NAME is not a valid cluster name, or another file already defines it (``a.yaml`` and
  ``a.yml``): the file is *rejected*, a problem to fix.

Any other name (``a.yaml.bak``, ``a.yaml~``, ``a.yaml.orig``, ``a.yaml.disabled``) is not a
cluster either. Files that are not clusters but whose name mentions ``.yaml``, ``.yml`` or
``.kubeconfig`` are *ignored* and listed with the reason, so a person who expected a cluster
learns why there is none; the rest (``README.md``, directories) pass in silence.

fleet.yaml is parsed strictly, like blackbox_exporter's configuration: an unknown key is an
error that names the key, because a typo that silently falls back to a default is worse than
an error. What an error costs depends on what it concerns:

- the file itself (not YAML, not a mapping, an unknown top-level key), ``server:``,
  ``defaults:`` or a ``clusters:`` that is not a mapping: a ConfigError. At start nothing
  can be served, so ``serve`` refuses to start; at reload the running configuration stays.
- one cluster's entry (an unknown or invalid setting, a bad label): that cluster only. It is
  still configured (listed in ``/targets``) but broken, with the key named in
  ``ClusterConfig.error``: its probes answer ``probe_success 0``, as for a broken
  kubeconfig. It does not run with defaults instead, for the reason above: probing with
  settings nobody chose would hide the mistake.
- an entry without a kubeconfig file (the file was removed first, the entry stays): a
  problem listed in ``FleetConfig.rejected``; the other clusters are served.

This module only reads names and settings; it never opens the kubeconfigs themselves
(that is ``credentials``), so one broken kubeconfig cannot stop the fleet from loading.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SETTINGS_FILE = "fleet.yaml"
KUBECONFIG_SUFFIXES = (".yaml", ".yml", ".kubeconfig")

# Safe as a Prometheus label value, a file name, a URL path segment and an HTML attribute:
# letters, digits, '.', '_' and '-', starting and ending with a letter or digit.
CLUSTER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Target labels that would collide with what the exporter or Prometheus sets itself.
RESERVED_LABELS = frozenset({"cluster", "instance", "job"})

_N = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_N}h)?(?:{_N}m(?!s))?(?:{_N}s)?(?:{_N}ms)?")


class ConfigError(ValueError):
    """A problem with the clusters directory or fleet.yaml; the message names the key."""


@dataclass(frozen=True)
class Settings:
    """How one cluster is probed. Every field can be set in ``defaults:`` or per cluster."""

    # How long a refresh's data is served before the next probe refreshes it. A little
    # under the usual 30 s scrape interval, so each scrape of an HA pair sees one refresh.
    cache_ttl: float = 25.0
    # A probe that cannot get fresh data in time may answer from data this old, no older.
    max_staleness: float = 120.0
    # blackbox's module timeout: caps the scrape-derived probe timeout (0 = no cap).
    timeout: float = 0.0
    # Subtracted from X-Prometheus-Scrape-Timeout-Seconds so the answer beats the deadline.
    timeout_offset: float = 0.5
    # How long one refresh may run in total. It outlives the probe that started it, so a
    # slow cluster's data still lands in the cache for the next scrape.
    refresh_timeout: float = 60.0
    # Upper bound for one API request, and for its TCP+TLS connect.
    request_timeout: float = 30.0
    connect_timeout: float = 5.0
    # Concurrent list calls to this cluster's API server, and the connections its own pool
    # keeps (the default is knobs.CONNECTIONS_PER_CLUSTER: lists are CPU-bound here, and 4
    # connections list a 2,000-volume cluster as fast as 10).
    concurrency: int = 4
    # Items per page (``limit``), the byte cap on one response, and the page count cap
    # that stops a server whose ``continue`` tokens never end.
    page_size: int = 500
    max_page_bytes: int = field(default=32 * 1024 * 1024, metadata={"size": True})
    max_pages: int = 1000
    namespace: str = "longhorn-system"
    # A cluster whose refreshes keep failing waits before the next one: a cache TTL after
    # the second failure in a row, doubling each time, at most this (and at least what a
    # Retry-After header asks, up to this); its probes are answered at once meanwhile.
    # 0 turns the back-off off.
    max_backoff: float = 300.0
    # Exec credential plugins that do not answer within this are killed.
    exec_timeout: float = 10.0


# max_concurrent_probes: auto. Each Prometheus server of an HA pair probes every cluster
# once an interval, and a probe waits at most its scrape timeout (less than the interval),
# so a pair has at most 2 probes per cluster in flight. Twice that leaves room for a third
# scraper or a sweep overlapping the next; the base for people and small fleets. Probes of
# one cluster share one refresh (single flight), so admitting more costs little.
AUTO = "auto"
PROBES_PER_CLUSTER = 4
PROBES_BASE = 100


@dataclass(frozen=True)
class ServerSettings:
    """Process-wide limits, set under ``server:`` in fleet.yaml."""

    # No effect since 0.2 (kept so existing files load; a warning says so): a refresh that
    # waits on the network holds nothing others need, and memory_budget bounds the bytes.
    max_concurrent_refreshes: int = 8
    # Bytes of list bodies in flight across the fleet, raw and inflated (limits.py); 0 = a
    # quarter of the container's memory limit, else 256 MiB. Sizes: 268435456, 256Mi, 1Gi.
    memory_budget: int = field(default=0, metadata={"size": True, "zero": True})
    # Probes answered at once; past this a probe gets 503 at once instead of queueing.
    # "auto" (the default): PROBES_PER_CLUSTER per configured cluster + PROBES_BASE,
    # recomputed at every reload, so an HA pair of Prometheus servers probing every cluster
    # at the same instant is normal load, never a 503 (500 clusters: 2,100). A number sets
    # a fixed limit.
    max_concurrent_probes: int | str = AUTO
    # Probe results kept per cluster for the triage page; failures are kept as long again.
    history_limit: int = 20

    def probe_limit(self, clusters: int) -> int:
        """Probes admitted at once with ``clusters`` configured."""
        if self.max_concurrent_probes == AUTO:
            return PROBES_PER_CLUSTER * clusters + PROBES_BASE
        assert isinstance(self.max_concurrent_probes, int)
        return self.max_concurrent_probes


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    kubeconfig: Path
    settings: Settings
    labels: Mapping[str, str] = field(default_factory=dict)
    # Set when the cluster's fleet.yaml entry is bad (names the key): the cluster is
    # configured but broken, and its kubeconfig is not loaded.
    error: str | None = None


@dataclass(frozen=True)
class NotServed:
    """A file, or a fleet.yaml entry, that is not a served cluster, and why."""

    reason: str  # a fixed word (REJECTED or IGNORED), for metrics and scripts
    message: str  # the whole explanation, for people


# Problems to fix: each is logged as an error, counted in fleet_exporter_config_problems and
# fails `fleet-exporter check`.
REJECTED = ("invalid_name", "duplicate_name", "no_kubeconfig")
# Deliberately not read (see the module docstring); listed so nobody wonders.
IGNORED = ("hidden", "backup", "reserved", "not_a_file", "suffix")


@dataclass(frozen=True)
class FleetConfig:
    directory: Path
    server: ServerSettings
    defaults: Settings
    clusters: Mapping[str, ClusterConfig]
    # Files that look like kubeconfigs but cannot be clusters (bad name, duplicate name),
    # and fleet.yaml entries without a kubeconfig, by file name or ``fleet.yaml:
    # clusters.NAME``.
    rejected: Mapping[str, NotServed] = field(default_factory=dict)
    # Files named like kubeconfigs or settings that are not read (backups, examples, ...).
    ignored: Mapping[str, NotServed] = field(default_factory=dict)


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a Go-style duration string ("30s", "1m30s", "500ms")."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and (m := _DURATION.fullmatch(value.strip())):
        if not any(m.groups()):
            raise ConfigError(f"{where}: invalid duration {value!r} (use e.g. 30s, 2m, 1h)")
        h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s + ms / 1000
    else:
        raise ConfigError(f"{where}: invalid duration {value!r} (use e.g. 30s, 2m, 1h)")
    if seconds < 0:
        raise ConfigError(f"{where}: must not be negative")
    return seconds


_SIZE = re.compile(r"(\d+)\s*(Ki|Mi|Gi|Ti)?")
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def parse_size(value: str, where: str) -> int:
    """Bytes from ``268435456`` or a Kubernetes-style ``256Mi``."""
    m = _SIZE.fullmatch(value.strip())
    if m is None:
        raise ConfigError(f"{where}: invalid size {value!r} (use e.g. 256Mi, 1Gi)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _coerce(where: str, f: dataclasses.Field, value: Any) -> Any:
    """Check one settings value against the field's declared type."""
    default = f.default
    if default == AUTO:  # "auto" or a number
        if value == AUTO:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: expected {AUTO} or a positive whole number, got {value!r}")
        return value
    if isinstance(default, float):  # every float setting is a duration
        return parse_duration(value, where)
    if isinstance(default, int):
        if f.metadata.get("size") and isinstance(value, str):
            value = parse_size(value, where)
        least = 0 if f.metadata.get("zero") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            kind = "a positive whole number" if least else "a whole number (0: automatic)"
            if f.metadata.get("size"):
                kind += " of bytes, or a size such as 256Mi"
            raise ConfigError(f"{where}: expected {kind}, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
        return value
    raise AssertionError(f"unhandled settings type for {f.name}")  # pragma: no cover


def _settings(cls: type, base: Any, raw: Any, where: str) -> Any:
    """A copy of ``base`` with the keys in ``raw`` applied; unknown keys are errors."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    changes = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}.{key}: unknown key (known keys: {known})")
        changes[key] = _coerce(f"{where}.{key}", fields[key], value)
    return dataclasses.replace(base, **changes)


def _labels(raw: Any, where: str) -> tuple[dict[str, str], str | None]:
    """The valid labels, and the first problem (None when there is none). A bad label does
    not drop the good ones, so the cluster keeps its target labels while it is broken."""
    if raw is None:
        return {}, None
    if not isinstance(raw, dict):
        return {}, f"{where}: expected a mapping of label names to values"
    labels, error = {}, None
    for key, value in raw.items():
        if not isinstance(key, str) or not LABEL_NAME.fullmatch(key) or key.startswith("__"):
            problem = f"{where}.{key}: not a valid Prometheus label name"
        elif key in RESERVED_LABELS:
            problem = (
                f"{where}.{key}: reserved (the exporter sets 'cluster'; Prometheus sets "
                "'instance' and 'job')"
            )
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            problem = f"{where}.{key}: label values must be strings"
        else:
            labels[key] = str(value)
            continue
        error = error or problem
    return labels, error


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{where}{key}: unknown key (known keys: {known})")


def load_settings_file(path: Path) -> dict:
    """The parsed fleet.yaml as a mapping ({} when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


_BACKUP_SUFFIXES = (
    "~",
    ".bak",
    ".orig",
    ".rej",
    ".swp",
    ".swo",
    ".tmp",
    ".old",
    ".save",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-dist",
    ".rpmnew",
    ".rpmsave",
)
_EXAMPLES = ("example", "sample")


def _not_a_cluster(filename: str) -> NotServed | None:
    """Why a file with this name is not a cluster, whatever it holds (None: it may be one)."""
    if filename.startswith("."):
        return NotServed("hidden", "hidden file (the name starts with '.'); not read")
    if filename.endswith(_BACKUP_SUFFIXES):
        return NotServed("backup", "a backup or editor file; not read")
    stem, dot, suffix = filename.rpartition(".")
    if not dot or f".{suffix}" not in KUBECONFIG_SUFFIXES:
        return NotServed(
            "suffix", "not a cluster: a cluster's file name ends in .yaml, .yml or .kubeconfig"
        )
    if stem == "fleet" or stem.startswith("fleet."):
        return NotServed(
            "reserved",
            f"not read: settings are read from {SETTINGS_FILE} only, and the names fleet "
            "and fleet.* are kept for settings files",
        )
    if stem in _EXAMPLES or stem.endswith(tuple(f".{e}" for e in _EXAMPLES)):
        return NotServed("reserved", "an example; not read")
    return None


def _looks_like_config(filename: str) -> bool:
    return any(s in filename for s in KUBECONFIG_SUFFIXES)


def cluster_files(
    directory: Path,
) -> tuple[dict[str, Path], dict[str, NotServed], dict[str, NotServed]]:
    """Kubeconfig files by cluster name; rejected files (problems) and ignored files
    (not read on purpose), each with the reason. See the module docstring."""
    found: dict[str, Path] = {}
    rejected: dict[str, NotServed] = {}
    ignored: dict[str, NotServed] = {}
    for path in sorted(directory.iterdir()):
        filename = path.name
        if filename == SETTINGS_FILE or not _looks_like_config(filename):
            continue
        why = _not_a_cluster(filename)
        if why is None and not path.is_file():  # follows symlinks, as kubelet's are
            why = NotServed("not_a_file", "not a regular file (a directory or a broken symlink)")
        if why is not None:
            ignored[filename] = why
            continue
        name = filename.rpartition(".")[0]
        if not CLUSTER_NAME.fullmatch(name):
            rejected[filename] = NotServed(
                "invalid_name",
                "not a valid cluster name: use letters, digits, '.', '_' and '-', "
                "starting and ending with a letter or digit, at most 128 characters",
            )
        elif name in found:
            rejected[filename] = NotServed(
                "duplicate_name", f"cluster {name!r} is already defined by {found[name].name}"
            )
        else:
            found[name] = path
    return found, rejected, ignored


def load_fleet(directory: Path) -> FleetConfig:
    """Read the clusters directory. Raises ConfigError only for what concerns the whole
    fleet: a missing directory, or a fleet.yaml that does not parse, a bad ``server:``
    or ``defaults:``. A problem with one cluster costs that cluster (module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: clusters directory does not exist")
    raw = load_settings_file(directory / SETTINGS_FILE)
    where = SETTINGS_FILE
    _check_keys(raw, {"server", "defaults", "clusters"}, f"{where}: ")
    server = _settings(ServerSettings, ServerSettings(), raw.get("server"), f"{where}: server")
    defaults = _settings(Settings, Settings(), raw.get("defaults"), f"{where}: defaults")
    entries = raw.get("clusters") or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{where}: clusters: expected a mapping of cluster names")

    files, rejected, ignored = cluster_files(directory)
    for name in entries:
        if name not in files:
            rejected[f"{where}: clusters.{name}"] = NotServed(
                "no_kubeconfig",
                f"no kubeconfig file for this cluster in {directory} (add {name}.yaml, "
                "or remove the entry)",
            )
    clusters = {
        name: _cluster(name, path, entries.get(name), defaults) for name, path in files.items()
    }
    return FleetConfig(directory, server, defaults, clusters, rejected, ignored)


def _cluster(name: str, path: Path, entry: Any, defaults: Settings) -> ClusterConfig:
    """One cluster with its fleet.yaml entry applied; a bad entry makes it broken."""
    where = f"{SETTINGS_FILE}: clusters.{name}"
    if entry is None:
        return ClusterConfig(name, path, defaults)
    if not isinstance(entry, dict):
        return ClusterConfig(name, path, defaults, error=f"{where}: expected a mapping")
    labels, error = _labels(entry.get("labels"), f"{where}.labels")
    own = {k: v for k, v in entry.items() if k != "labels"}
    try:
        settings = _settings(Settings, defaults, own, where)
    except ConfigError as e:
        settings, error = defaults, str(e)
    return ClusterConfig(name, path, settings, labels, error)
