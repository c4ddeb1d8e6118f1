"""The clusters directory: which clusters exist and how each is probed.

Every ``*.yaml``, ``*.yml`` or ``*.kubeconfig`` file in the directory is one cluster,
named after the file. An optional ``fleet.yaml`` beside them holds settings. Parsing is
strict, like blackbox_exporter's: an unknown key is an error that names the key, because a
typo that silently falls back to a default is worse than a refusal to start.

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
    # Concurrent list calls to this cluster's API server. The HTTP layer keeps at most 4
    # connections per cluster (kube.CONNECTIONS_PER_CLUSTER: lists are CPU-bound here, and
    # 4 connections list a 2,000-volume cluster as fast as 10), so more would only queue.
    concurrency: int = 4
    # Items per page (``limit``), the byte cap on one response, and the page count cap
    # that stops a server whose ``continue`` tokens never end.
    page_size: int = 500
    max_page_bytes: int = 32 * 1024 * 1024
    max_pages: int = 1000
    namespace: str = "longhorn-system"
    # Exec credential plugins that do not answer within this are killed.
    exec_timeout: float = 10.0


@dataclass(frozen=True)
class ServerSettings:
    """Process-wide limits, set under ``server:`` in fleet.yaml."""

    # Refreshes running at once across the fleet; bounds memory when many clusters are cold.
    max_concurrent_refreshes: int = 8
    # Probes answered at once; past this a probe gets 503 instead of queueing forever.
    max_concurrent_probes: int = 200
    # Probe results kept per cluster for the triage page; failures are kept as long again.
    history_limit: int = 20


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    kubeconfig: Path
    settings: Settings
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetConfig:
    directory: Path
    server: ServerSettings
    defaults: Settings
    clusters: Mapping[str, ClusterConfig]
    # Files that look like kubeconfigs but cannot be clusters (bad name, duplicate name).
    rejected: Mapping[str, str] = field(default_factory=dict)


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


def _coerce(where: str, f: dataclasses.Field, value: Any) -> Any:
    """Check one settings value against the field's declared type."""
    default = f.default
    if isinstance(default, float):  # every float setting is a duration
        return parse_duration(value, where)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: expected a positive whole number, got {value!r}")
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


def _labels(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of label names to values")
    labels = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise ConfigError(f"{where}.{key}: not a valid Prometheus label name")
        if key in RESERVED_LABELS:
            raise ConfigError(
                f"{where}.{key}: reserved (the exporter sets 'cluster'; Prometheus sets "
                "'instance' and 'job')"
            )
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: label values must be strings")
        labels[key] = str(value)
    return labels


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


def cluster_files(directory: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Kubeconfig files by cluster name, and the rejected files with the reason."""
    found: dict[str, Path] = {}
    rejected: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.name == SETTINGS_FILE or path.name.startswith("."):
            continue
        if path.suffix not in KUBECONFIG_SUFFIXES or not path.is_file():
            continue
        name = path.name[: -len(path.suffix)]
        if not CLUSTER_NAME.fullmatch(name):
            rejected[path.name] = (
                "not a valid cluster name: use letters, digits, '.', '_' and '-', "
                "starting and ending with a letter or digit, at most 128 characters"
            )
        elif name in found:
            rejected[path.name] = f"cluster {name!r} is already defined by {found[name].name}"
        else:
            found[name] = path
    return found, rejected


def load_fleet(directory: Path) -> FleetConfig:
    """Read the clusters directory. Raises ConfigError for a bad directory or fleet.yaml."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: clusters directory does not exist")
    settings_path = directory / SETTINGS_FILE
    raw = load_settings_file(settings_path)
    where = SETTINGS_FILE
    _check_keys(raw, {"server", "defaults", "clusters"}, f"{where}: ")
    server = _settings(ServerSettings, ServerSettings(), raw.get("server"), f"{where}: server")
    defaults = _settings(Settings, Settings(), raw.get("defaults"), f"{where}: defaults")

    files, rejected = cluster_files(directory)
    overrides = raw.get("clusters") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: clusters: expected a mapping of cluster names")
    for name in overrides:
        if name not in files:
            raise ConfigError(
                f"{where}: clusters.{name}: no kubeconfig file for this cluster in {directory}"
            )

    clusters = {}
    for name, path in files.items():
        o = overrides.get(name) or {}
        if not isinstance(o, dict):
            raise ConfigError(f"{where}: clusters.{name}: expected a mapping")
        own = {k: v for k, v in o.items() if k != "labels"}
        settings = _settings(Settings, defaults, own, f"{where}: clusters.{name}")
        labels = _labels(o.get("labels"), f"{where}: clusters.{name}.labels")
        clusters[name] = ClusterConfig(name, path, settings, labels)
    return FleetConfig(directory, server, defaults, clusters, rejected)
