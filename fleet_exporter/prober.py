"""The prober: one refresh of one cluster.

A refresh lists every Longhorn resource of a cluster concurrently, page by page
(``kube.KubeClient.list``), reduces each page into small records as it arrives and drops
it. As soon as a group of lists (``longhorn.JOINS``: volumes with replicas and engines,
snapshots, backups, ...) has ended, it joins them, builds that group's metric families
and renders them once (``exposition``), in CPU turns on the event loop, while the other
lists are still arriving. Every probe served from that refresh reuses those bytes, so an
HA pair of Prometheus servers plus dashboards does not multiply the work.

It takes a narrow ``Target``, not the fleet, and never raises for upstream trouble:
failures are part of the result, per resource.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgspec

from .config import Settings
from .credentials import Credentials
from .exposition import Family, Rendered, Writer, encoded, inflate, render, rendering
from .kube import Call, KubeClient, UpstreamError
from .limits import MemoryBudget
from .longhorn import CORE_RESOURCES, JOINS, RESOURCES, Join
from .longhorn.catalogue import building_group
from .longhorn.churn import SnapshotChurn
from .longhorn.records import ClusterState
from .longhorn.reduce import ClusterReducer
from .scheduling import cpu_turns, run_sliced
from .units import timestamp

REFUSED_AS_SERVED = frozenset({"body_too_large", "invalid"})


@dataclass(frozen=True, slots=True)
class Target:
    """What one refresh needs to know of its cluster, and nothing else of the fleet.
    ``churn`` and ``errors_total`` are the cluster's own state, carried from refresh to
    refresh; ``expected`` is how long its last good refresh took (CPU turns go to the
    longest first)."""

    name: str
    settings: Settings
    credentials: Credentials | None
    load_error: str | None
    churn: SnapshotChurn
    errors_total: Counter[str]
    budget: MemoryBudget
    expected: float = 0.0


class ResourceResult(msgspec.Struct, gc=False):
    """How listing one resource went in one refresh (plain values: untracked by the
    garbage collector, like the other records kept per cluster)."""

    ok: bool = False
    objects: int = 0
    malformed: int = 0
    unreadable: int = 0
    retry_after: float | None = None  # the API server asked to wait this long (Retry-After)
    code: str | None = None  # the failed call's code (``kube.UpstreamError.code``)
    pages: int = 0
    seconds: float | None = None  # how long the list ran; None when it never started
    error: str | None = None


@dataclass(eq=False)
class Refresh:
    """The outcome of one refresh: what every probe of this cluster serves until ``ttl``
    passes. ``ok`` means the core lists succeeded, so the data is worth serving.
    ``rendered`` is its metrics, already encoded and compressed (``exposition``): a
    refresh keeps no families."""

    cluster: str
    ok: bool
    ttl: float
    max_staleness: float
    started_at: float  # wall clock, for people
    finished_at: float
    finished_mono: float  # monotonic, for ages
    error: str | None
    calls: list[Call]
    resources: dict[str, ResourceResult]
    state: ClusterState | None
    rendered: Rendered
    _log: str | None = field(default=None, repr=False)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def retry_after(self) -> float | None:
        """The longest wait an API server asked for in this refresh (Retry-After)."""
        asked = [r.retry_after for r in self.resources.values() if r.retry_after is not None]
        return max(asked) if asked else None

    @property
    def refused_as_served(self) -> bool:
        """A core list failed on what the API server sent (too large, not valid), not on
        the way there: trying again at once would fetch the same bytes to fail the same."""
        return any(self.resources[r].code in REFUSED_AS_SERVED for r in CORE_RESOURCES)

    def age(self, now_mono: float | None = None) -> float:
        return max(0.0, (now_mono or time.monotonic()) - self.finished_mono)

    def log(self) -> str:
        """What the refresh did, call by call, for every probe's log (made once: a big
        cluster's refresh makes ~150 calls, and every warm probe logs them)."""
        if self._log is None:
            verdict = "ok" if self.ok else "FAILED"
            lines = [
                f"Refresh {timestamp(self.started_at)}: {verdict} in {self.duration:.3f}s"
                + (f": {self.error}" if self.error else ""),
                "Upstream calls:",
            ]
            lines += _call_lines(self.calls)
            if not self.calls:
                lines.append("  (none)")
            lines.append("Resources:")
            for name, r in sorted(self.resources.items()):
                status = "ok" if r.ok else "FAILED"
                took = "       -" if r.seconds is None else f"{r.seconds:8.3f}s"
                line = f"  {name:<14} {status:<6} {r.objects:>7} objects {r.pages:>4} pages {took}"
                if r.malformed:
                    line += f"  {r.malformed} malformed objects skipped"
                if r.unreadable:
                    line += f"  {r.unreadable} values unreadable (their samples left out)"
                if r.error:
                    line += f"  {r.error}"
                lines.append(line)
            self._log = "\n".join(lines)
        return self._log

    def text(self, openmetrics: bool = False) -> bytes:
        """The rendered metrics (no ``# EOF``), inflated whole: for the one-shot CLI."""
        return inflate(self.rendered.body(openmetrics))


def _call_lines(calls: list[Call]) -> list[str]:
    """One line per call; failed calls with the same code and error (a cluster that
    refuses connections fails every attempt of every list alike) are folded into one
    line, where the first of them was, with their count and resources."""
    failed: dict[tuple[str, str], list[Call]] = {}
    for c in calls:
        if c.error:
            failed.setdefault((c.code, c.error), []).append(c)
    lines = []
    for c in calls:
        same = failed.get((c.code, c.error)) if c.error else None
        if same is None or len(same) == 1:
            lines.append(
                f"  {c.code:>7}  {c.resource:<14} page {c.page:<4} {c.seconds:8.3f}s "
                f"{c.bytes:>10} B" + (f"  {c.error}" if c.error else "")
            )
        elif same[0] is c:
            resources = ", ".join(dict.fromkeys(x.resource for x in same))
            took = [x.seconds for x in same]
            lines.append(
                f"  {c.code:>7}  {c.resource:<14} page {c.page:<4} x{len(same)} calls alike, "
                f"{min(took):.3f}-{max(took):.3f}s each  {c.error}  (resources: {resources})"
            )
    return lines


async def refresh(
    target: Target, session: aiohttp.ClientSession, on_call: Callable[[Call], None]
) -> Refresh:
    """List everything from one cluster and render it."""
    settings = target.settings
    started_at = time.time()
    deadline = time.monotonic() + settings.refresh_timeout
    calls: list[Call] = []
    resources = {r: ResourceResult() for r in RESOURCES}

    def record(call: Call) -> None:
        calls.append(call)
        on_call(call)

    def failed(error: str) -> Refresh:
        for r in resources.values():
            r.error = r.error or error
        return _finish(target, False, error, calls, resources, None, started_at)

    if target.credentials is None:
        return failed(target.load_error or "kubeconfig not loaded")

    client = KubeClient(
        session, target.credentials, settings, record, cluster=target.name, budget=target.budget
    )
    reducer = ClusterReducer()
    writer = Writer(target.name)
    limit = asyncio.Semaphore(settings.concurrency)

    async def list_one(resource: str) -> None:
        result = resources[resource]

        async def read(body: bytes | bytearray) -> str:
            result.pages += 1
            page = await run_sliced(reducer.adding_page(resource, body), target.expected)
            result.objects += page.items
            result.malformed += page.malformed
            result.unreadable += page.unreadable
            return page.continue_token

        t0 = time.monotonic()
        async with limit:
            try:
                await client.list(resource, read, deadline)
                result.ok = True
            except UpstreamError as e:
                result.error = f"{resource}: {e}"
                result.retry_after = e.retry_after
                result.code = e.code
                target.errors_total[resource] += 1
                if resource in CORE_RESOURCES:
                    give_up(resource)
            finally:
                result.seconds = time.monotonic() - t0

    def give_up(core: str) -> None:
        """A core list failed, so the refresh will serve nothing: the other lists stop now
        rather than hold connections, budget and CPU turns for data nobody gets."""
        for name, task in lists.items():
            if not task.done() and name != core:
                why = f"{name}: stopped after {resources[core].error}"
                resources[name].error = resources[name].error or why
                task.cancel()

    def doomed() -> bool:
        return any(resources[r].error for r in CORE_RESOURCES)

    async def render_join(join: Join) -> Rendered:
        """Join, build and render one group of lists as soon as they have all ended."""
        await asyncio.wait([lists[r] for r in join.lists])
        if doomed():
            return Rendered.join([])
        complete = frozenset(r for r in join.lists if resources[r].ok)
        state = await run_sliced(reducer.joining(join, complete), target.expected)
        target.churn.update(state)  # only the snapshots group's state changes it
        families = await run_sliced(
            building_group(join, state, target.churn, writer), target.expected
        )
        return await run_sliced(rendering(families), target.expected)

    # Starting a refresh sends its first requests at once: a CPU turn, so that 500
    # clusters going cold together start one after another, not all in one loop iteration
    # (which stalled the loop for ~0.6 s at 500 clusters).
    async with cpu_turns().slot(target.expected):
        lists = {r: asyncio.create_task(list_one(r)) for r in RESOURCES}
    try:
        parts = await asyncio.gather(*(render_join(join) for join in JOINS))
        await asyncio.wait(lists.values())
        for task in lists.values():  # a bug in a list raises here
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in lists.values():
            task.cancel()
        # A stopped list's error keeps its frames, and they reach back here (``give_up``
        # holds ``lists``): a cycle only a full collection frees, with the bodies those
        # frames were reading (121 MB for one cluster of oversized lists). Emptied, the
        # tasks go by reference counting.
        lists.clear()
    core_failed = [r for r in CORE_RESOURCES if not resources[r].ok]
    if core_failed:
        return failed(resources[core_failed[0]].error or "core resources failed")
    complete = frozenset(r for r, res in resources.items() if res.ok)
    head = collection_families(True, resources, target.errors_total)
    rendered = Rendered.join([render(encoded(head, target.name)), *parts])
    state = reducer.state(complete)
    failures = [res.error for res in resources.values() if res.error]
    error = f"partial data: {'; '.join(failures)}" if failures else None
    return _finish(target, True, error, calls, resources, state, started_at, rendered)


def failed_refresh(target: Target, error: str, started_at: float) -> Refresh:
    """A refresh that produced nothing servable, with ``error`` on every resource."""
    resources = {r: ResourceResult(error=error) for r in RESOURCES}
    return _finish(target, False, error, [], resources, None, started_at)


def _finish(
    target: Target,
    ok: bool,
    error: str | None,
    calls: list[Call],
    resources: dict[str, ResourceResult],
    state: ClusterState | None,
    started_at: float,
    rendered: Rendered | None = None,
) -> Refresh:
    s = target.settings
    if rendered is None:  # a failed refresh: a few small families, rendered on the spot
        head = collection_families(ok, resources, target.errors_total)
        rendered = render(encoded(head, target.name))
    return Refresh(
        cluster=target.name,
        ok=ok,
        ttl=s.cache_ttl,
        max_staleness=s.max_staleness,
        started_at=started_at,
        finished_at=time.time(),
        finished_mono=time.monotonic(),
        error=error,
        calls=calls,
        resources=resources,
        state=state,
        rendered=rendered,
    )


def collection_families(
    ok: bool, resources: dict[str, ResourceResult], errors_total: Counter[str]
) -> list[Family]:
    """How the refresh went, per resource: rendered with the Longhorn data. What a list
    could not tell is absent, never 0: the counts only for a list that completed, the
    duration only for a list that ran (not one stopped before it started, or a refresh
    that never ran: back-off, no kubeconfig)."""
    names = sorted(resources)
    listed = [r for r in names if resources[r].ok]
    ran = [r for r in names if resources[r].seconds is not None]

    def per_resource(
        name: str, help_: str, kind: str, value: Callable[[str], float], of: list[str] = names
    ) -> Family:
        return Family(name, kind, help_, ("resource",), [((r,), value(r)) for r in of])

    return [
        Family(
            "longhorn_up",
            "gauge",
            "1 when the API server answered and served Longhorn's resources in the data "
            "being served.",
            (),
            [((), 1.0 if ok else 0.0)],
        ),
        per_resource(
            "longhorn_exporter_list_success",
            "1 when the last refresh listed this resource completely.",
            "gauge",
            lambda r: 1.0 if resources[r].ok else 0.0,
        ),
        per_resource(
            "longhorn_exporter_list_objects",
            "Objects listed in the last refresh.",
            "gauge",
            lambda r: float(resources[r].objects),
            listed,
        ),
        per_resource(
            "longhorn_exporter_list_duration_seconds",
            "Time to list all pages of this resource in the last refresh.",
            "gauge",
            lambda r: resources[r].seconds or 0.0,
            ran,
        ),
        per_resource(
            "longhorn_exporter_malformed_objects",
            "Objects skipped in the last refresh because they did not decode.",
            "gauge",
            lambda r: float(resources[r].malformed),
            listed,
        ),
        per_resource(
            "longhorn_exporter_unreadable_values",
            "Values left out of the last refresh's metrics because they could not be read.",
            "gauge",
            lambda r: float(resources[r].unreadable),
            listed,
        ),
        per_resource(
            "longhorn_exporter_scrape_errors_total",
            "Failed list attempts since the exporter started.",
            "counter",
            lambda r: float(errors_total[r]),
        ),
    ]
