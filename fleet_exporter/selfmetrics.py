"""The exporter's own metrics, served on ``/metrics`` (never on ``/probe``).

A private registry rather than prometheus_client's global one, so several apps (tests, the
demo) can live in one process without sharing counters. Per-cluster label values are
pre-initialised when clusters are configured, so a cluster that never got probed shows 0
instead of nothing, and removed clusters' series are dropped on reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily

from . import __version__
from .config import REJECTED

# What asks for a reload of the clusters directory: SIGHUP, POST /-/reload, the watch.
RELOAD_TRIGGERS = ("signal", "http", "watch")
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class LoopTasks:
    """Tasks alive on the event loop. Collected on the loop thread (the ``/metrics``
    handler renders inline), so a leak of background tasks shows as growth."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            n = len(asyncio.all_tasks())
        except RuntimeError:  # collected outside a running loop
            return
        yield GaugeMetricFamily(
            "fleet_exporter_asyncio_tasks", "Tasks alive on the event loop.", value=n
        )


class SelfMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(LoopTasks())
        Gauge(
            "fleet_exporter_build_info",
            "Build information; always 1.",
            ["version", "python_version"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        self.cluster_configured = Gauge(
            "fleet_exporter_cluster_configured",
            "1 for every configured cluster, whether its kubeconfig loads or not.",
            ["cluster"],
            registry=r,
        )
        self.cluster_config_ok = Gauge(
            "fleet_exporter_cluster_config_ok",
            "1 when the cluster's kubeconfig loaded, 0 when it is broken (its kubeconfig or "
            "its fleet.yaml entry).",
            ["cluster"],
            registry=r,
        )
        self.clusters = Gauge(
            "fleet_exporter_clusters", "Configured and broken clusters.", ["state"], registry=r
        )
        self.probes = Counter(
            "fleet_exporter_probes", "Probes answered.", ["cluster", "result"], registry=r
        )
        self.probe_duration = Histogram(
            "fleet_exporter_probe_duration_seconds",
            "Time to answer a probe.",
            ["cluster"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.refresh_duration = Histogram(
            "fleet_exporter_refresh_duration_seconds",
            "Time of one upstream refresh (all lists of one cluster).",
            ["cluster"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.last_refresh_success = Gauge(
            "fleet_exporter_last_refresh_success_timestamp_seconds",
            "End of the last refresh that produced servable data.",
            ["cluster"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "fleet_exporter_upstream_requests",
            "Kubernetes API calls by HTTP status or error class.",
            ["cluster", "resource", "code"],
            registry=r,
        )
        self.cache_requests = Counter(
            "fleet_exporter_cache_requests",
            "How probes were answered: from cache (hit), after a refresh (miss), or from "
            "older data because the refresh did not finish in time (stale).",
            ["cluster", "result"],
            registry=r,
        )
        self.probes_in_flight = Gauge(
            "fleet_exporter_probes_in_flight", "Probes being answered now.", registry=r
        )
        self.probes_in_flight_limit = Gauge(
            "fleet_exporter_probes_in_flight_limit",
            "Probes answered at once; past this a probe gets 503 (server.max_concurrent_probes).",
            registry=r,
        )
        self.refreshes_in_flight = Gauge(
            "fleet_exporter_refreshes_in_flight", "Upstream refreshes running now.", registry=r
        )
        self.rejected = Counter(
            "fleet_exporter_requests_rejected",
            "Requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in ("unknown_cluster", "bad_request", "overloaded", "unauthorized"):
            self.rejected.labels(reason)
        self.reload_ok = Gauge(
            "fleet_exporter_config_last_reload_successful",
            "1 when the last reload of the clusters directory succeeded.",
            registry=r,
        )
        self.reload_time = Gauge(
            "fleet_exporter_config_last_reload_success_timestamp_seconds",
            "Time of the last successful reload of the clusters directory.",
            registry=r,
        )
        self.reloads = Counter(
            "fleet_exporter_config_reloads",
            "Reloads of the clusters directory, by what asked for it (signal, http, watch) "
            "and result.",
            ["trigger", "result"],
            registry=r,
        )
        for trigger in RELOAD_TRIGGERS:
            for result in ("success", "failure"):
                self.reloads.labels(trigger, result)
        self.config_problems = Gauge(
            "fleet_exporter_config_problems",
            "Files and fleet.yaml entries in the clusters directory that cannot be served, "
            "by reason (the log and `fleet-exporter check` name each).",
            ["reason"],
            registry=r,
        )
        for reason in REJECTED:
            self.config_problems.labels(reason)
        self.config_hash = Gauge(
            "fleet_exporter_config_hash",
            "Hash of the configuration in force; replicas that follow the same directory agree.",
            registry=r,
        )
        self.watch_interval = Gauge(
            "fleet_exporter_config_watch_interval_seconds",
            "How often the clusters directory is checked for changes (0: never).",
            registry=r,
        )
        self.watch_time = Gauge(
            "fleet_exporter_config_last_check_timestamp_seconds",
            "Time the clusters directory was last checked for changes.",
            registry=r,
        )

    _PER_CLUSTER = (
        "cluster_configured",
        "cluster_config_ok",
        "probe_duration",
        "refresh_duration",
        "last_refresh_success",
    )

    def set_clusters(self, ok: dict[str, bool], removed: Iterable[str] = ()) -> None:
        """Pre-initialise series for the configured clusters; drop removed ones."""
        for name in removed:
            for attr in self._PER_CLUSTER:
                _remove(getattr(self, attr), name)
            for result in ("success", "failure"):
                _remove(self.probes, name, result)
            for result in ("hit", "miss", "stale"):
                _remove(self.cache_requests, name, result)
            self._remove_upstream(name)
        for name, good in ok.items():
            self.cluster_configured.labels(name).set(1)
            self.cluster_config_ok.labels(name).set(1 if good else 0)
            self.probe_duration.labels(name)
            self.refresh_duration.labels(name)
            for result in ("success", "failure"):
                self.probes.labels(name, result)
            for result in ("hit", "miss", "stale"):
                self.cache_requests.labels(name, result)
        self.clusters.labels("configured").set(len(ok))
        self.clusters.labels("broken").set(sum(1 for good in ok.values() if not good))

    def set_config(self, problems: dict[str, int], config_hash: int) -> None:
        for reason in REJECTED:
            self.config_problems.labels(reason).set(problems.get(reason, 0))
        self.config_hash.set(config_hash)

    def _remove_upstream(self, cluster: str) -> None:
        # prometheus_client has no "remove by partial labels"; walk the known children.
        for labels in list(self.upstream_requests._metrics):
            if labels[0] == cluster:
                self.upstream_requests.remove(*labels)


def _remove(metric, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
