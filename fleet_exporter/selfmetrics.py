"""The exporter's own metrics, served on ``/metrics`` (never on ``/probe``).

``/metrics`` must stay cheap at 500 clusters and more, and never cost the probes: anyone
who can reach the port can poll it. Before, a histogram per cluster and upstream calls per
cluster, resource and code made 64-69 series per cluster (3.0-3.3 MB and 32-35k series at
500 clusters), and each GET took 0.30-0.41 s of CPU on the event loop (``python -m
bench.selfmetrics``): polling it a few times a second starved the probes. Now:

- **Bounded series per cluster** (docs/metrics.md, "Series per cluster"): counters and
  gauges only. Probes by result, cache answers by source, the last probe's and the last
  refresh's duration, the last success, and upstream calls by code (HTTP statuses outside
  ``KNOWN_STATUSES`` as their class). The duration histograms are fleet-wide, and so are
  upstream calls by resource: a cluster's failing resources are in its own probe answer
  (``longhorn_exporter_list_success``) and its ``?debug=true`` log.
- **Plain numbers, lines kept until they change.** Each cluster's numbers live in one
  ``ClusterStats`` (an increment is an attribute update, no lock), written as lines with
  ``exposition``'s escaping and number formatting, and kept until one of them changes: in
  a second, most clusters did not change, so a render mostly joins strings.
  prometheus_client holds the fleet-wide part (the process and platform collectors, the
  histograms, the configuration state: a fixed number of series), encoded here too
  (``registry_families``).
- **Rendered at most once a second.** One rendering serves both formats; each body
  (text or OpenMetrics, plain or gzipped) is kept for ``RENDER_INTERVAL``, and every
  poller within it gets the same bytes; only a reload of the configuration makes the next
  request render afresh (``config_changed``). At 500 clusters a render costs 4-7 ms of CPU in the
  serving process, a cached answer 0.1-0.3 ms.

A private registry rather than prometheus_client's global one, so several apps (tests, the
demo) can live in one process without sharing counters. Per-cluster counters are there from
the moment a cluster is configured, so a cluster that never got probed shows 0 instead of
nothing, and removed clusters' series are dropped on reload. Gauges of a last duration or
time appear once there is one: absent, never invented.
"""

from __future__ import annotations

import asyncio
import math
import platform
import resource
import time
from collections.abc import Iterable, Iterator

from isal import isal_zlib
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
from .exposition import EOF_LINE, Encoded, Numbers, escape, meta
from .knobs import GZIP_LEVEL, RENDER_INTERVAL
from .limits import MemoryBudget

# What asks for a reload of the clusters directory: SIGHUP, POST /-/reload, the watch.
RELOAD_TRIGGERS = ("signal", "http", "watch")
# How a probe's data was found (cache.Lookup.source; "timeout" is no data, not an answer).
CACHE_SOURCES = ("hit", "miss", "stale")
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# HTTP statuses an API server answers a list with, kept as they are in the ``code`` label;
# any other status is ``4xx``, ``5xx`` or ``other``, so a server answering with ever new
# statuses cannot grow a cluster's series without bound. The other codes are the fixed
# error classes of ``kube`` (``timeout``, ``tls``, ...).
KNOWN_STATUSES = frozenset(
    str(s) for s in (200, *range(400, 411), 413, 415, 422, 429, *range(500, 505))
)


def code_label(code: str) -> str:
    """An upstream call's code as the metrics show it (see KNOWN_STATUSES)."""
    if code.isdigit() and code not in KNOWN_STATUSES:
        return f"{code[0]}xx" if len(code) == 3 and code[0] in "45" else "other"
    return code


class ClusterStats:
    """One cluster's numbers, updated where things happen and written out on ``/metrics``;
    ``lines`` keeps them written until one changes (None: to be written)."""

    __slots__ = (
        "config_ok",
        "hit",
        "label",
        "last_probe_seconds",
        "last_refresh_seconds",
        "last_success",
        "lines",
        "miss",
        "probes_failure",
        "probes_success",
        "stale",
        "upstream",
    )

    def __init__(self, name: str) -> None:
        self.label = escape(name)  # a cluster name needs no escaping; cheap insurance
        self.config_ok = False
        self.probes_success = self.probes_failure = 0
        self.hit = self.miss = self.stale = 0
        self.last_probe_seconds: float | None = None
        self.last_refresh_seconds: float | None = None
        self.last_success: float | None = None
        self.upstream: dict[str, int] = {}  # by code_label
        self.lines: tuple[str, ...] | None = None


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
        self.clusters = Gauge(
            "fleet_exporter_clusters", "Configured and broken clusters.", ["state"], registry=r
        )
        self.probe_duration = Histogram(
            "fleet_exporter_probe_duration_seconds",
            "Time to answer a probe, across the fleet.",
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.refresh_duration = Histogram(
            "fleet_exporter_refresh_duration_seconds",
            "Time of one upstream refresh (all lists of one cluster), across the fleet.",
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.upstream_resource_requests = Counter(
            "fleet_exporter_upstream_resource_requests",
            "Kubernetes API calls across the fleet, by resource and HTTP status or error class.",
            ["resource", "code"],
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
        files = Gauge(
            "fleet_exporter_open_files_limit",
            "RLIMIT_NOFILE: the soft limit (raised to the hard one at start) and the hard one.",
            ["limit"],
            registry=r,
        )
        for i, which in enumerate(("soft", "hard")):
            files.labels(which).set_function(lambda i=i: _nofile()[i])
        self._memory_budget = Gauge(
            "fleet_exporter_memory_budget_bytes",
            "The fleet's memory budget for list bodies in flight (server.memory_budget), "
            "and the bytes it holds now.",
            ["state"],
            registry=r,
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
        # Per cluster, by name (kept sorted, so the output is); what is rendered and when.
        self.cluster_stats: dict[str, ClusterStats] = {}
        self._snapshot: list[Encoded] = []
        self._rendered_at: float | None = None
        self._bodies: dict[tuple[bool, bool], bytes] = {}

    # ------------------------------------------------------------------ recording

    def set_clusters(self, ok: dict[str, bool], removed: Iterable[str] = ()) -> None:
        """The configured clusters (True: its kubeconfig loaded); removed ones' series
        go. A cluster that stays keeps its counters."""
        stats = self.cluster_stats
        for name in removed:
            stats.pop(name, None)
        for name, good in ok.items():
            s = stats.get(name) or stats.setdefault(name, ClusterStats(name))
            s.config_ok, s.lines = good, None
        self.cluster_stats = dict(sorted(stats.items()))
        self.clusters.labels("configured").set(len(ok))
        self.clusters.labels("broken").set(sum(1 for good in ok.values() if not good))
        self.config_changed()

    def watch_budget(self, budget: MemoryBudget) -> None:
        """Report ``budget``'s limit and use, read at each render."""
        self._memory_budget.labels("limit").set_function(lambda: budget.limit)
        self._memory_budget.labels("used").set_function(lambda: budget.used)

    def set_config(self, problems: dict[str, int], config_hash: int) -> None:
        for reason in REJECTED:
            self.config_problems.labels(reason).set(problems.get(reason, 0))
        self.config_hash.set(config_hash)
        self.config_changed()

    def reload_failed(self, trigger: str) -> None:
        self.reload_ok.set(0)
        self.reloads.labels(trigger, "failure").inc()
        self.config_changed()

    def config_changed(self) -> None:
        """The next ``/metrics`` renders afresh: whoever reloads the configuration and
        then reads ``/metrics`` sees the reload, not the body of the second before.
        Reloads are rare (a signal, ``POST /-/reload`` with --web.enable-lifecycle, or a
        change in the directory), so this costs nothing a poller could multiply."""
        self._rendered_at = None

    def probe_done(self, cluster: str, success: bool, seconds: float) -> None:
        """A probe of ``cluster`` was answered after ``seconds``."""
        self.probe_duration.observe(seconds)
        s = self.cluster_stats.get(cluster)
        if s is not None:
            if success:
                s.probes_success += 1
            else:
                s.probes_failure += 1
            s.last_probe_seconds, s.lines = seconds, None

    def cache_request(self, cluster: str, source: str) -> None:
        """A probe of ``cluster`` was answered from the cache: ``hit``, ``miss``, ``stale``."""
        s = self.cluster_stats.get(cluster)
        if s is not None and source in CACHE_SOURCES:
            setattr(s, source, getattr(s, source) + 1)
            s.lines = None

    def refresh_done(self, cluster: str, seconds: float, success_at: float | None) -> None:
        """A refresh of ``cluster`` took ``seconds``; ``success_at``: when it ended, if it
        produced servable data."""
        self.refresh_duration.observe(seconds)
        s = self.cluster_stats.get(cluster)
        if s is not None:
            s.last_refresh_seconds, s.lines = seconds, None
            if success_at is not None:
                s.last_success = success_at

    def upstream_call(self, cluster: str, resource: str, code: str) -> None:
        """One Kubernetes API call of ``cluster``'s, ended with ``code``."""
        code = code_label(code)
        self.upstream_resource_requests.labels(resource, code).inc()
        s = self.cluster_stats.get(cluster)
        if s is not None:
            s.upstream[code] = s.upstream.get(code, 0) + 1
            s.lines = None

    # ------------------------------------------------------------------ exposition

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The whole ``/metrics`` body, in text 0.0.4 or OpenMetrics 1.0.0, gzipped or
        not. The families are rendered at most once per ``RENDER_INTERVAL`` (both formats
        are joined from the same rendering), and each body is kept until the next."""
        now = time.monotonic()
        if self._rendered_at is None or now - self._rendered_at >= RENDER_INTERVAL:
            self._snapshot = [
                *registry_families(self.registry),
                *cluster_families(self.cluster_stats.values()),
            ]
            self._rendered_at = now
            self._bodies.clear()
        key = (openmetrics, gzipped)
        body = self._bodies.get(key)
        if body is None:
            if gzipped:
                plain = self.exposition(openmetrics, False)
                body = isal_zlib.compress(plain, GZIP_LEVEL, wbits=31)
            else:
                text = "".join(
                    (f.openmetrics_meta if openmetrics else f.text_meta) + f.samples
                    for f in self._snapshot
                )
                body = text.encode() + (EOF_LINE if openmetrics else b"")
            self._bodies[key] = body
        return body


def _nofile() -> tuple[float, float]:
    """The soft and hard open-file limits (unlimited as +Inf)."""
    return tuple(  # type: ignore[return-value]
        math.inf if v == resource.RLIM_INFINITY else float(v)
        for v in resource.getrlimit(resource.RLIMIT_NOFILE)
    )


def registry_families(registry: CollectorRegistry) -> list[Encoded]:
    """The fleet-wide part (prometheus_client's metrics and collectors), encoded here in
    both formats at once: prometheus_client's own OpenMetrics encoder took 2.7 ms for
    these 150 series, checking every character of every label name. Label values
    escaped, labels in name order and numbers formatted as prometheus_client does; the
    ``_created`` samples of counters and histograms are left out (optional in
    OpenMetrics, not part of the text format)."""
    num = Numbers()
    out = []
    for metric in registry.collect():
        created = metric.name + "_created"
        lines = []
        for sample in metric.samples:
            if sample.name == created:
                continue
            if sample.labels:
                pairs = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{pairs}}} {num[sample.value]}\n")
            else:
                lines.append(f"{sample.name} {num[sample.value]}\n")
        if lines:
            text_meta, om_meta = (
                _meta(metric.name, metric.type, metric.documentation, om) for om in (False, True)
            )
            out.append(Encoded(text_meta, om_meta, "".join(lines)))
    return out


def _meta(name: str, kind: str, help_: str, openmetrics: bool) -> str:
    """``exposition.meta``, which knows gauges and counters, and histograms too (written
    as a gauge's, with the type changed: the escaping is the same)."""
    if kind == "histogram":
        gauge = meta(name, "gauge", help_, openmetrics=openmetrics)
        return gauge.removesuffix(" gauge\n") + " histogram\n"
    return meta(name, kind, help_, openmetrics=openmetrics)


# The per-cluster families, in the order written (docs/metrics.md lists them).
CLUSTER_FAMILIES = (
    (
        "fleet_exporter_cluster_configured",
        "gauge",
        "1 for every configured cluster, whether its kubeconfig loads or not.",
    ),
    (
        "fleet_exporter_cluster_config_ok",
        "gauge",
        "1 when the cluster's kubeconfig loaded, 0 when it is broken (its kubeconfig or "
        "its fleet.yaml entry).",
    ),
    ("fleet_exporter_probes_total", "counter", "Probes answered."),
    (
        "fleet_exporter_cache_requests_total",
        "counter",
        "How probes were answered: from cache (hit), after a refresh (miss), or from older "
        "data because the refresh did not finish in time (stale).",
    ),
    (
        "fleet_exporter_last_probe_duration_seconds",
        "gauge",
        "Time to answer the cluster's last probe.",
    ),
    (
        "fleet_exporter_last_refresh_duration_seconds",
        "gauge",
        "Time of the cluster's last upstream refresh (all lists), successful or not.",
    ),
    (
        "fleet_exporter_last_refresh_success_timestamp_seconds",
        "gauge",
        "End of the last refresh that produced servable data.",
    ),
    (
        "fleet_exporter_upstream_requests_total",
        "counter",
        "Kubernetes API calls by HTTP status or error class (by resource: "
        "fleet_exporter_upstream_resource_requests_total, across the fleet).",
    ),
)
_META = [
    (meta(n, kind, help_, openmetrics=False), meta(n, kind, help_, openmetrics=True))
    for n, kind, help_ in CLUSTER_FAMILIES
]


def cluster_families(stats: Iterable[ClusterStats]) -> list[Encoded]:
    """The per-cluster families. Each cluster's lines are written straight from its
    numbers, and kept until they change: most clusters did not change since the last
    render (each is probed once or twice an interval), so a render mostly joins."""
    chunks = []
    num = Numbers()
    for s in stats:
        if s.lines is None:
            s.lines = _cluster_lines(s, num)
        chunks.append(s.lines)
    out = []
    for i, (text_meta, om_meta) in enumerate(_META):
        samples = "".join([c[i] for c in chunks])
        if samples:
            out.append(Encoded(text_meta, om_meta, samples))
    return out


def _cluster_lines(s: ClusterStats, num: Numbers) -> tuple[str, ...]:
    """One cluster's sample lines, family by family (CLUSTER_FAMILIES)."""
    c = s.label
    lines = [
        f'fleet_exporter_cluster_configured{{cluster="{c}"}} 1.0\n',
        f'fleet_exporter_cluster_config_ok{{cluster="{c}"}} {"1.0" if s.config_ok else "0.0"}\n',
        f'fleet_exporter_probes_total{{cluster="{c}",result="success"}} {num[s.probes_success]}\n'
        f'fleet_exporter_probes_total{{cluster="{c}",result="failure"}} {num[s.probes_failure]}\n',
        f'fleet_exporter_cache_requests_total{{cluster="{c}",result="hit"}} {num[s.hit]}\n'
        f'fleet_exporter_cache_requests_total{{cluster="{c}",result="miss"}} {num[s.miss]}\n'
        f'fleet_exporter_cache_requests_total{{cluster="{c}",result="stale"}} {num[s.stale]}\n',
    ]
    for name, value in (
        ("fleet_exporter_last_probe_duration_seconds", s.last_probe_seconds),
        ("fleet_exporter_last_refresh_duration_seconds", s.last_refresh_seconds),
        ("fleet_exporter_last_refresh_success_timestamp_seconds", s.last_success),
    ):
        lines.append("" if value is None else f'{name}{{cluster="{c}"}} {num[value]}\n')
    lines.append(
        "".join(
            f'fleet_exporter_upstream_requests_total{{cluster="{c}",code="{code}"}} {num[n]}\n'
            for code, n in sorted(s.upstream.items())
        )
    )
    return tuple(lines)
