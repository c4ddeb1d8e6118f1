"""The configured clusters at run time: credentials, caches and probe history.

Loading and reloading live here. A reload re-reads the clusters directory and changes only
what changed: new clusters are loaded, removed ones forgotten, clusters whose kubeconfig or
settings changed get fresh credentials and an empty cache, and the rest keep their cache.
A problem with one cluster (its kubeconfig, its fleet.yaml entry, an entry without a
kubeconfig) costs that cluster only and is logged once, when it appears. A reload that fails
(a fleet.yaml that does not parse, a bad ``server:`` or ``defaults:``) keeps the running
configuration. Reloads come from SIGHUP, ``POST /-/reload`` or ``watch``; each is counted by
trigger and result in the exporter's own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp

from .cache import Lookup, RefreshCache
from .config import ClusterConfig, ConfigError, FleetConfig, load_fleet
from .credentials import Credentials, CredentialsError, check_permissions, load_credentials
from .history import History
from .knobs import TRIM_AFTER_BYTES, release_free_memory
from .kube import Call, new_session
from .limits import Descriptors, MemoryBudget, default_memory_budget
from .longhorn.churn import SnapshotChurn
from .prober import Refresh, Target, failed_refresh, refresh
from .selfmetrics import SelfMetrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClusterRuntime:
    config: ClusterConfig
    fingerprint: str
    credentials: Credentials | None = None
    load_error: str | None = None
    churn: SnapshotChurn = field(default_factory=SnapshotChurn)
    errors_total: Counter[str] = field(default_factory=Counter)
    history: History = field(default_factory=lambda: History(20))
    # Set once the kubeconfig has been tried (loaded or found broken). Clusters are
    # published before their credentials load, so the server answers at once; a refresh
    # waits for this.
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    # How long the last successful refresh took (None: none yet): CPU turns go to the
    # longest first.
    last_refresh_seconds: float | None = None
    # Back-off: refreshes failed in a row, and when the next one may start (monotonic).
    failures: int = 0
    retry_at: float = 0.0
    last_failed: Refresh | None = None  # the last refresh that ran and failed
    # This cluster's own connections: a hung API server holds only these.
    session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def target(self, budget: MemoryBudget) -> Target:
        """What the prober needs of this cluster for one refresh."""
        return Target(
            name=self.name,
            settings=self.config.settings,
            credentials=self.credentials,
            load_error=self.load_error,
            churn=self.churn,
            errors_total=self.errors_total,
            budget=budget,
            expected=self.last_refresh_seconds or 0.0,
        )

    def client_session(self) -> aiohttp.ClientSession:
        """The cluster's session, opened when first needed (after its idle connections
        were closed, say). Idle connections live two cache TTLs: long enough for the next
        scrape's refresh to reuse them, not much longer."""
        if self.session is None or self.session.closed:
            s = self.config.settings
            self.session = new_session(s.concurrency, max(10.0, 2 * s.cache_ttl))
        return self.session

    async def close_session(self) -> None:
        """Close the cluster's connections (idle, or in use by a refresh still running for
        a cluster that was removed); the next refresh opens new ones."""
        session, self.session = self.session, None
        if session is not None:
            await session.close()


@dataclass(frozen=True)
class ReloadResult:
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    broken: dict[str, str]

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} "
            f"changed, {len(self.unchanged)} unchanged, {len(self.broken)} broken"
        )

    def changes(self) -> str:
        """What changed, with the names (a few of each); empty when nothing did."""
        parts = []
        for what, names in (
            ("added", self.added),
            ("removed", self.removed),
            ("changed", self.changed),
        ):
            if names:
                shown = ", ".join(sorted(names)[:NAMES_SHOWN])
                more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
                parts.append(f"{what} {shown}{more}")
        return "; ".join(parts)


NAMES_SHOWN = 10  # cluster names in one log line about a reload


def _fingerprint(cfg: ClusterConfig) -> str:
    """Changes when the kubeconfig (its bytes or its path) or the cluster's settings change."""
    h = hashlib.sha256(
        repr((cfg.settings, sorted(cfg.labels.items()), cfg.error, str(cfg.kubeconfig))).encode()
    )
    try:
        h.update(cfg.kubeconfig.read_bytes())
    except OSError as e:
        h.update(f"unreadable:{e.errno}".encode())
    return h.hexdigest()


class Fleet:
    def __init__(
        self,
        directory: Path,
        metrics: SelfMetrics | None = None,
        only: set[str] | None = None,
        report: bool = True,
    ):
        """``only`` limits the fleet to some clusters (``fleet-exporter probe`` loads just
        the one it probes, so other clusters' exec plugins do not run). ``report=False``
        leaves per-cluster problems out of the log, for commands that print each cluster's
        outcome themselves (``check``, ``probe``), so nothing is said twice."""
        self.directory = Path(directory)
        self.only = only
        self.report = report
        self.metrics = metrics or SelfMetrics()
        self.clusters: dict[str, ClusterRuntime] = {}
        self.config: FleetConfig | None = None
        self.cache: RefreshCache[Refresh] = RefreshCache()
        self.budget = MemoryBudget(0)  # sized from the configuration in start()
        self.metrics.watch_budget(self.budget)
        self.descriptors = Descriptors()
        self.ready = False
        self._reload_lock = asyncio.Lock()
        self._refreshing = 0
        self._listed_bytes = 0  # list bodies since the last release_free_memory()
        self._loading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the HTTP session, read the clusters directory and publish the clusters;
        their credentials load in the background (``ready`` turns true when all are
        tried), so a slow exec plugin never keeps the server from listening. Raises
        ConfigError when the directory or fleet.yaml is unusable; a broken kubeconfig is
        not such an error, nor is any other problem of one cluster."""
        config = await asyncio.to_thread(load_fleet, self.directory)
        self._size_budget(config, None)
        self.config = config  # the server settings apply from the start
        self._loading = asyncio.create_task(self._initial_load(config), name="initial-load")

    async def _initial_load(self, config: FleetConfig) -> None:
        async with self._reload_lock:
            await self._apply(config, None)
            self._reloaded()
        self.ready = True

    async def wait_ready(self) -> None:
        if self._loading is not None:
            await self._loading

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await self.cache.close()
        await asyncio.gather(*(rt.close_session() for rt in self.clusters.values()))

    async def reload(self, trigger: str = "signal") -> ReloadResult:
        """Re-read the clusters directory and apply the changes; returns once the
        changed clusters' credentials are loaded. A ConfigError keeps the running state
        (it is logged here, once). ``trigger`` (one of selfmetrics.RELOAD_TRIGGERS)
        labels the metrics and the log line."""
        await self.wait_ready()
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_fleet, self.directory)
            except ConfigError as e:
                self.metrics.reload_failed(trigger)
                log.error("reload (%s) failed, keeping the running configuration: %s", trigger, e)
                raise
            result = await self._apply(config, trigger)
            self._reloaded()
            self.metrics.reloads.labels(trigger, "success").inc()
            return result

    def _reloaded(self) -> None:
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())

    def _report_entries(self, config: FleetConfig) -> None:
        """Log each rejected and ignored entry once: when it first appears (or its reason
        changes), not at every reload."""
        before = self.config if self.config is not config else None
        for entries, old, level in (
            (config.rejected, before.rejected if before else {}, logging.ERROR),
            (config.ignored, before.ignored if before else {}, logging.INFO),
        ):
            for what, why in entries.items():
                if old.get(what) != why:
                    log.log(level, "%s: %s", what, why.message)

    def _size_budget(self, config: FleetConfig, previous: FleetConfig | None) -> None:
        """The memory budget from ``server.memory_budget`` (0: automatic), logged when it
        changes; and the deprecated ``max_concurrent_refreshes``, said when it appears."""
        server = config.server
        if server.memory_budget:
            limit, why = server.memory_budget, "server.memory_budget"
        else:
            limit, why = default_memory_budget()
        if limit != self.budget.limit:
            self.budget.limit = limit
            log.info("memory budget for list bodies in flight: %d MiB (%s)", limit >> 20, why)
        biggest = max((c.settings.max_page_bytes for c in config.clusters.values()), default=0)
        if biggest > limit:
            log.warning(
                "fleet.yaml: max_page_bytes (%d MiB) is more than the whole memory budget "
                "(%d MiB, %s): a page that big is always refused",
                biggest >> 20,
                limit >> 20,
                why,
            )
        before = previous.server.max_concurrent_refreshes if previous else MAX_CONCURRENT_REFRESHES
        if server.max_concurrent_refreshes not in (before, MAX_CONCURRENT_REFRESHES):
            log.warning(
                "fleet.yaml: server.max_concurrent_refreshes has no effect any more: a "
                "refresh that waits holds nothing others need, and server.memory_budget "
                "bounds the memory; remove the key"
            )

    async def _apply(self, config: FleetConfig, trigger: str | None) -> ReloadResult:
        old = self.clusters
        new: dict[str, ClusterRuntime] = {}
        added, changed, unchanged = [], [], []
        closing: list[ClusterRuntime] = []  # replaced or removed: their connections go
        for name, cfg in config.clusters.items():
            if self.only is not None and name not in self.only:
                continue
            fp = await asyncio.to_thread(_fingerprint, cfg)
            prev = old.get(name)
            if prev is not None and prev.fingerprint == fp:
                new[name] = prev
                unchanged.append(name)
                continue
            rt = ClusterRuntime(cfg, fp, history=History(config.server.history_limit))
            if prev is not None:
                # Counters and churn baselines carry over; cached data does not.
                rt.churn, rt.errors_total, rt.history = prev.churn, prev.errors_total, prev.history
                rt.last_refresh_seconds = prev.last_refresh_seconds
                self.cache.forget(name)
                closing.append(prev)
                changed.append(name)
            else:
                added.append(name)
            new[name] = rt
        removed = [name for name in old if name not in new]
        for name in removed:
            self.cache.forget(name)
            closing.append(old[name])
        if self.report:
            self._report_entries(config)
        if config is not self.config:
            self._size_budget(config, self.config)
        self.clusters, self.config = new, config
        await asyncio.gather(*(rt.close_session() for rt in closing))
        # Exec plugins run in parallel; the kubernetes package's part is serialised inside
        # credentials (its temp files are process-global).
        await asyncio.gather(*(self._load_credentials(new[n]) for n in (*added, *changed)))
        broken = {n: rt.load_error for n, rt in new.items() if rt.load_error is not None}
        self.metrics.set_clusters({n: rt.credentials is not None for n, rt in new.items()}, removed)
        self.metrics.set_config(
            Counter(why.reason for why in config.rejected.values()),
            _config_hash(config, new),
        )
        result = ReloadResult(added, removed, changed, unchanged, broken)
        if trigger is None:
            log.info(
                "clusters directory %s loaded: %d configured, %d broken, %d other problems",
                config.directory,
                len(new),
                len(broken),
                len(config.rejected),
            )
        elif changes := result.changes():
            log.info(
                "reload (%s): %s; %d clusters, %d broken", trigger, changes, len(new), len(broken)
            )
        else:
            log.debug("reload (%s): no cluster changed", trigger)
        return result

    async def _load_credentials(self, rt: ClusterRuntime) -> None:
        path = rt.config.kubeconfig
        if rt.config.error is not None:  # its fleet.yaml entry is bad: broken, not loaded
            rt.load_error = rt.config.error
            if self.report:
                log.error("cluster %s: %s", rt.name, rt.load_error)
            rt.loaded.set()
            return
        warning = await asyncio.to_thread(check_permissions, path)
        if warning:
            log.warning("cluster %s: %s", rt.name, warning)
        try:
            rt.credentials = await load_credentials(
                path, exec_timeout=rt.config.settings.exec_timeout
            )
        except CredentialsError as e:
            # The error names the file already ("kubeconfig PATH: ...").
            text = str(e)
            rt.load_error = text if text.startswith("kubeconfig ") else f"kubeconfig {path}: {text}"
            if self.report:
                log.error("cluster %s: %s", rt.name, rt.load_error)
        finally:
            rt.loaded.set()

    async def lookup(self, rt: ClusterRuntime, wait: float) -> Lookup[Refresh]:
        """Data for one probe: cached, refreshed within ``wait`` seconds, or stale."""
        lookup = await self.cache.get(rt.name, lambda: self._refresh(rt), wait)
        if lookup.source != "timeout":
            self.metrics.cache_request(rt.name, lookup.source)
        return lookup

    async def _refresh(self, rt: ClusterRuntime) -> Refresh:
        if not rt.loaded.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.loaded.wait(), rt.config.settings.refresh_timeout)
        started_at = time.time()
        target = rt.target(self.budget)
        if (wait := rt.retry_at - time.monotonic()) > 0:
            return _backing_off(target, rt, wait, started_at)
        if self.descriptors.exhausted() and await self._close_idle_connections():
            # Less than the reserve left even with every idle connection closed: a new
            # refresh would take the listener's last descriptors.
            limit = self.descriptors.limit()
            return failed_refresh(
                target,
                f"shed: {self.descriptors.open()} of {limit} file descriptors open; no new "
                "refresh starts until some close",
                started_at,
            )
        self.metrics.refreshes_in_flight.inc()
        self._refreshing += 1
        try:
            on_call = partial(self._count_call, rt.name)
            result = await refresh(target, rt.client_session(), on_call)
        except Exception as e:
            # A bug (say, data shaped as no Longhorn version ever was) costs this one
            # cluster its probe, never the process or the other clusters.
            log.exception("cluster %s: refresh failed unexpectedly", rt.name)
            result = failed_refresh(target, f"internal error: {type(e).__name__}", started_at)
        finally:
            self.metrics.refreshes_in_flight.dec()
            self._refreshing -= 1
        if self.descriptors.pressure():
            await rt.close_session()  # its idle connections: the next refresh reconnects
        if not self._refreshing and self._listed_bytes >= TRIM_AFTER_BYTES:
            self._listed_bytes = 0
            release_free_memory()
        if self.clusters.get(rt.name) is rt:  # not removed or replaced meanwhile
            self.metrics.refresh_done(
                rt.name, result.duration, result.finished_at if result.ok else None
            )
            if result.ok:
                rt.last_refresh_seconds = result.duration
        _back_off(rt, result)
        if result.error and rt.load_error is None and self.report:
            # A broken cluster's reason was logged when it was loaded, not at every probe.
            log.warning("cluster %s: %s", rt.name, result.error)
        return result

    async def _close_idle_connections(self) -> bool:
        """Close the connections of every cluster not refreshing now; True when the
        descriptors are still exhausted after that."""
        idle = [rt for rt in self.clusters.values() if not self.cache.refreshing(rt.name)]
        await asyncio.gather(*(rt.close_session() for rt in idle))
        return self.descriptors.exhausted(fresh=True)

    def _count_call(self, cluster: str, call: Call) -> None:
        self._listed_bytes += call.bytes
        if cluster in self.clusters:
            self.metrics.upstream_call(cluster, call.resource, call.code)


MAX_CONCURRENT_REFRESHES = 8  # the old default, which no file needs to set any more
BACKOFF_AFTER = 2  # refreshes failed in a row before the next one waits


def _back_off(rt: ClusterRuntime, result: Refresh) -> None:
    """After ``BACKOFF_AFTER`` failed refreshes in a row, the next waits one cache TTL,
    doubling with each failure up to ``max_backoff``, and never less than a Retry-After
    the API server sent. A refresh that failed on what the server sent (a list over
    ``max_page_bytes``, a body that is not valid) waits from the first failure: an
    oversized list would otherwise be fetched in full at every probe. A good refresh ends
    it. The probes in between are answered at once with the reason: a failing cluster
    costs neither the others nor its own probes' time."""
    if result.ok:
        rt.failures, rt.retry_at, rt.last_failed = 0, 0.0, None
        return
    rt.failures += 1
    rt.last_failed = result
    s = rt.config.settings
    delay = 0.0
    after = 1 if result.refused_as_served else BACKOFF_AFTER
    if rt.failures >= after:
        delay = min(s.cache_ttl * 2 ** (rt.failures - after), s.max_backoff)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, s.max_backoff))
    rt.retry_at = time.monotonic() + delay if delay else 0.0


def _backing_off(target: Target, rt: ClusterRuntime, wait: float, started_at: float) -> Refresh:
    """The answer while a cluster backs off: failed, with the reason, cached until the
    next attempt may start. It carries the last real failure's per-resource results and
    its collection series (which lists failed, and why), not a copy of the reason on
    every resource: on-call sees what went wrong, not only that the exporter waits."""
    last = rt.last_failed
    failed = f"{rt.failures} refreshes failed in a row" if rt.failures > 1 else "1 refresh failed"
    error = f"backing off: {failed}; next attempt in {wait:.0f}s (last: {last and last.error})"
    if last is None:
        return dataclasses.replace(failed_refresh(target, error, started_at), ttl=wait)
    return dataclasses.replace(
        last,
        error=error,
        ttl=wait,
        calls=[],  # none made now; the failure's own calls were shown with it
        _log=None,  # its own, not the failure's
        started_at=started_at,
        finished_at=time.time(),
        finished_mono=time.monotonic(),
    )


def _config_hash(config: FleetConfig, clusters: dict[str, ClusterRuntime]) -> int:
    """The configuration in force, as a number: the same on every replica that follows the
    same directory, so a replica that stopped following stands out. 52 bits, exact as a
    float sample value."""
    h = hashlib.sha256(repr(config.server).encode())
    for name in sorted(clusters):
        h.update(f"{name}={clusters[name].fingerprint};".encode())
    for what in sorted(config.rejected):
        h.update(f"{what}!{config.rejected[what].reason};".encode())
    return int.from_bytes(h.digest()[:8], "big") >> 12
