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
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from .cache import Lookup, RefreshCache
from .config import ClusterConfig, ConfigError, FleetConfig, load_fleet
from .credentials import Credentials, CredentialsError, check_permissions, load_credentials
from .history import History
from .knobs import TRIM_AFTER_BYTES, release_free_memory
from .kube import Call, new_session
from .longhorn.churn import SnapshotChurn
from .prober import Refresh, Target, failed_refresh, refresh
from .scheduling import Slots
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
    # How long the last successful refresh took (None: none yet): the refresh slots and CPU
    # turns go to the longest first.
    last_refresh_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def target(self) -> Target:
        """What the prober needs of this cluster for one refresh."""
        return Target(
            name=self.name,
            settings=self.config.settings,
            credentials=self.credentials,
            load_error=self.load_error,
            churn=self.churn,
            errors_total=self.errors_total,
            expected=self.last_refresh_seconds or 0.0,
        )


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
        self.session: aiohttp.ClientSession | None = None
        self.ready = False
        self._reload_lock = asyncio.Lock()
        self._refresh_slots: Slots | None = None
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
        self.session = new_session()  # only now: a failed start leaves nothing to close
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
        if self.session is not None:
            await self.session.close()

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

    async def _apply(self, config: FleetConfig, trigger: str | None) -> ReloadResult:
        old = self.clusters
        new: dict[str, ClusterRuntime] = {}
        added, changed, unchanged = [], [], []
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
                changed.append(name)
            else:
                added.append(name)
            new[name] = rt
        removed = [name for name in old if name not in new]
        for name in removed:
            self.cache.forget(name)
        if self.report:
            self._report_entries(config)
        limit = config.server.max_concurrent_refreshes
        if self._refresh_slots is None or self._refresh_slots.size != limit:
            self._refresh_slots = Slots(limit)
        self.clusters, self.config = new, config
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
        assert self.session is not None
        assert self._refresh_slots is not None
        async with self._refresh_slots.slot(rt.last_refresh_seconds or 0.0):
            self.metrics.refreshes_in_flight.inc()
            self._refreshing += 1
            started_at = time.time()
            target = rt.target()
            try:
                result = await refresh(target, self.session, lambda c: self._count_call(rt.name, c))
            except Exception as e:
                # A bug (say, data shaped as no Longhorn version ever was) costs this one
                # cluster its probe, never the process or the other clusters.
                log.exception("cluster %s: refresh failed unexpectedly", rt.name)
                result = failed_refresh(target, f"internal error: {type(e).__name__}", started_at)
            finally:
                self.metrics.refreshes_in_flight.dec()
                self._refreshing -= 1
        if not self._refreshing and self._listed_bytes >= TRIM_AFTER_BYTES:
            self._listed_bytes = 0
            release_free_memory()
        if self.clusters.get(rt.name) is rt:  # not removed or replaced meanwhile
            self.metrics.refresh_done(
                rt.name, result.duration, result.finished_at if result.ok else None
            )
            if result.ok:
                rt.last_refresh_seconds = result.duration
        if result.error and rt.load_error is None and self.report:
            # A broken cluster's reason was logged when it was loaded, not at every probe.
            log.warning("cluster %s: %s", rt.name, result.error)
        return result

    def _count_call(self, cluster: str, call: Call) -> None:
        self._listed_bytes += call.bytes
        if cluster in self.clusters:
            self.metrics.upstream_call(cluster, call.resource, call.code)


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


# Where the HTTP layer keeps the fleet; here, so app and pages both import it from below.
FLEET = web.AppKey("fleet", Fleet)
