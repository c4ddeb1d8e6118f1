"""One refresh of one cluster, and the answer to one probe.

A *refresh* lists every Longhorn resource of a cluster concurrently, page by page, reduces
each page into small records as it arrives and drops it. As soon as a group of lists
(``longhorn.JOINS``: volumes with replicas and engines, snapshots, backups, ...) has ended,
it joins them, builds that group's metric families and renders them once, straight to
gzip, in short steps on the event loop, while the other lists are still arriving.
Every probe served from that refresh reuses those bytes, so an HA pair of Prometheus
servers plus dashboards does not multiply the work. A *probe* adds a small per-request
head (``probe_success``, durations, data age) in front of them.

The rendered form is a list of gzip members per format. Both formats have the same sample
lines and differ only in some ``# HELP``/``# TYPE`` lines, so the members are shared but
where the metadata differs; concatenated gzip members are one valid gzip stream (RFC 1952
section 2.2), so either format is a join of cached bytes, and the families themselves are
dropped once rendered (bench/README.md has the numbers behind each choice).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import math
import struct
import time
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, TypeVar

import aiohttp
from isal import isal_zlib

from .kube import Call, Fetched, KubeClient, UpstreamError
from .longhorn import (
    CORE_RESOURCES,
    JOINS,
    RESOURCES,
    ClusterReducer,
    ClusterState,
    Join,
    drain,
    peek_continue,
)
from .metrics import Family, building_group, encode_parts
from .slots import Slots

if TYPE_CHECKING:
    from .fleet import ClusterRuntime

DEFAULT_TIMEOUT = 120.0  # blackbox_exporter's, when Prometheus sends no scrape timeout
# 2,000 volumes (15.3 MB of exposition), ISA-L (isal): level 1 takes 15 ms for 2.12 MB,
# level 3 64 ms for 2.11 MB; zlib took 67 ms at level 1 (2.28 MB), 192 ms at level 6
# (1.95 MB). CPU is what limits the exporter; a few % more bytes to Prometheus is cheap.
GZIP_LEVEL = 1
# Joining, building families and rendering are pure Python: a 2,000-volume cluster takes
# ~200 ms. They run on the event loop in steps of at most SLICE seconds, between which
# probes and I/O get their turn. (In a worker thread, the loop fought that thread for the
# GIL at every socket read and decompression, and each loop callback took twice as long:
# 60-100 ms stalls in a 51-cluster sweep against 10-20 ms now; bench/README.md.)
SLICE = 0.005
CHUNK = 1024  # samples encoded (and compressed) per render step
R = TypeVar("R")
INFLATE_INLINE_BYTES = 64 * 1024  # smaller rendered bodies are gunzipped on the loop
# Pages of one list fetched but not yet decoded (_Feed); bounds what it costs: up to
# AHEAD + 2 inflated pages per list (0.4-1.9 MB each at page size 500).
AHEAD = 2


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``, which
    also releases free pages inside the heap, not just at its top; elsewhere nothing).
    A refresh allocates its pages (~1 MB each, inflated) on the same heap as the small
    records that outlive it, and glibc keeps the holes resident: after a 51-cluster sweep
    it took RSS from 152-160 to 132 MB in 1.5-2.5 ms (bench/README.md). Refreshes used
    to inflate on a worker thread, whose own malloc arena kept that churn apart."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def settle_heap() -> None:
    """Call once, after startup, when the kubeconfigs are loaded: the startup heap (~65k
    objects, mostly imported modules) moves to the garbage collector's permanent
    generation, so a full collection no longer walks it. Measured in a 51-cluster sweep:
    longest loop stall 57 -> 40 ms (bench/README.md). (Young collections every 10,000
    allocations instead of 700 looked good in-process, but in the served exporter they
    made 50 ms pauses and 50 MB more RSS.)"""
    gc.collect()
    gc.freeze()


def probe_timeout(header: str | None, module_timeout: float, offset: float) -> float:
    """blackbox_exporter's rule (prober/handler.go getTimeout), case for case.

    The scrape timeout Prometheus sends, less ``offset``; 120 s when absent or 0; capped by
    the configured ``module_timeout``, which is not reduced by the offset. Raises
    ValueError for a header that is not a finite number.
    """
    base = DEFAULT_TIMEOUT
    if header is not None and header.strip():
        base = float(header)
        if not math.isfinite(base):
            raise ValueError("not a finite number")
    if base == 0:
        base = DEFAULT_TIMEOUT
    limit = base - offset
    if 0 < module_timeout < limit or limit < 0:
        return module_timeout
    return limit


@dataclass(slots=True)
class ResourceResult:
    """How listing one resource went in one refresh."""

    ok: bool = False
    objects: int = 0
    malformed: int = 0
    pages: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass(slots=True, frozen=True)
class Rendered:
    """The families as gzip members, in order, for each format. Most members are shared:
    only families whose ``# HELP``/``# TYPE`` lines differ between the formats (counters,
    help texts with quotes) split the stream, with a small member per format."""

    text: tuple[bytes, ...]
    openmetrics: tuple[bytes, ...]


def render(families: Iterable[Family], cluster: str) -> Rendered:
    """Encode and compress, all at once (see ``rendering``)."""
    return drain(rendering(families, cluster))


def rendering(families: Iterable[Family], cluster: str) -> Generator[None, None, Rendered]:
    """Encode and compress family by family, ``CHUNK`` samples per step: the whole
    exposition is never held as text, and a new compressor (~0.1 ms to set up) starts only
    where the formats differ."""
    text: list[bytes] = []
    openmetrics: list[bytes] = []
    member: list[bytes] = []
    compressor = None

    def close_member() -> None:
        nonlocal compressor
        if compressor is not None:
            member.append(compressor.flush())
            shared = b"".join(member)
            text.append(shared)
            openmetrics.append(shared)
            member.clear()
            compressor = None

    for part in encode_parts(families, cluster, CHUNK):
        if part.text_meta == part.openmetrics_meta:
            chunk = part.text_meta + part.samples
        else:
            close_member()
            text.append(stored_gzip(part.text_meta.encode("utf-8")))
            openmetrics.append(stored_gzip(part.openmetrics_meta.encode("utf-8")))
            chunk = part.samples
        if compressor is None:
            compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        member.append(compressor.compress(chunk.encode("utf-8")))
        yield
    close_member()
    return Rendered(tuple(text), tuple(openmetrics))


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Slots] = weakref.WeakKeyDictionary()


def cpu_turns() -> Slots:
    """The running event loop's CPU turns: one CPU-heavy refresh step (a page's decode and
    reduce, a slice of join or render) per loop iteration across all refreshes, the
    longest refresh's first (see ``slots``). Slicing alone did not bound an iteration:
    eight refreshes each ran their slice in the same one."""
    loop = asyncio.get_running_loop()
    turns = _TURNS.get(loop)
    if turns is None:
        turns = _TURNS[loop] = Slots(1, defer=True)
    return turns


async def run_sliced(steps: Generator[None, None, R], expected: float = 0.0) -> R:
    """Run a stepwise computation on the event loop, ``SLICE`` seconds per CPU turn;
    ``expected`` is how long the refresh it belongs to is likely to take."""
    turns = cpu_turns()
    while True:
        async with turns.slot(expected):
            until = time.perf_counter() + SLICE
            while time.perf_counter() < until:
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value


def stored_gzip(data: bytes) -> bytes:
    """A gzip member holding ``data`` uncompressed (deflate "stored" blocks): for a few
    hundred bytes of metadata, cheaper than setting up a compressor, and barely larger."""
    blocks = []
    for start in range(0, max(len(data), 1), 0xFFFF):
        chunk = data[start : start + 0xFFFF]
        last = start + 0xFFFF >= len(data)
        blocks.append(struct.pack("<BHH", last, len(chunk), 0xFFFF ^ len(chunk)) + chunk)
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + b"".join(blocks) + trailer


# magic, deflate, no flags, mtime 0, no extra flags, OS unknown
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _inflate(members: Iterable[bytes]) -> bytes:
    return b"".join(isal_zlib.decompress(m, wbits=31) for m in members)


_INFLATE_THREAD: ThreadPoolExecutor | None = None


def inflate_thread() -> ThreadPoolExecutor:
    """The thread that inflates cached metrics for clients that take no gzip: a big body
    inflates there (ISA-L lets go of the GIL) while the loop serves others. One thread, not
    asyncio's default pool: each extra thread would get its own malloc arena (more
    resident memory, measured)."""
    global _INFLATE_THREAD
    if _INFLATE_THREAD is None:
        _INFLATE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="inflate")
    return _INFLATE_THREAD


@dataclass(eq=False)
class Refresh:
    """The outcome of one refresh: what every probe of this cluster serves until ``ttl``
    passes. ``ok`` means the core lists succeeded, so the data is worth serving.
    ``rendered`` is its metrics, already encoded and compressed: a refresh keeps no
    families."""

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

    def age(self, now_mono: float | None = None) -> float:
        return max(0.0, (now_mono or time.monotonic()) - self.finished_mono)

    def log(self) -> str:
        """What the refresh did, call by call, for every probe's log (made once: a big
        cluster's refresh makes ~150 calls, and every warm probe logs them)."""
        if self._log is None:
            verdict = "ok" if self.ok else "FAILED"
            lines = [
                f"Refresh {_when(self.started_at)}: {verdict} in {self.duration:.3f}s"
                + (f": {self.error}" if self.error else ""),
                "Upstream calls:",
            ]
            lines += [
                f"  {c.code:>7}  {c.resource:<14} page {c.page:<4} {c.seconds:8.3f}s "
                f"{c.bytes:>10} B" + (f"  {c.error}" if c.error else "")
                for c in self.calls
            ]
            if not self.calls:
                lines.append("  (none)")
            lines.append("Resources:")
            for name, r in sorted(self.resources.items()):
                status = "ok" if r.ok else "FAILED"
                line = (
                    f"  {name:<14} {status:<6} {r.objects:>7} objects {r.pages:>4} pages "
                    f"{r.seconds:8.3f}s"
                )
                if r.malformed:
                    line += f"  {r.malformed} malformed objects skipped"
                if r.error:
                    line += f"  {r.error}"
                lines.append(line)
            self._log = "\n".join(lines)
        return self._log

    def members(self, openmetrics: bool) -> tuple[bytes, ...]:
        """The rendered metrics (no ``# EOF``) as the gzip members they are kept in."""
        return self.rendered.openmetrics if openmetrics else self.rendered.text

    async def text(self, openmetrics: bool) -> bytes:
        """The rendered metrics (no ``# EOF``) inflated, for clients that take no gzip."""
        members = self.members(openmetrics)
        if sum(map(len, members)) <= INFLATE_INLINE_BYTES:
            return _inflate(members)
        # ISA-L lets go of the GIL: the loop keeps running while a big body inflates.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(inflate_thread(), _inflate, members)


async def refresh_cluster(
    rt: ClusterRuntime, session: aiohttp.ClientSession, on_call: Callable[[str, Call], None]
) -> Refresh:
    """List everything from one cluster and render it. Never raises for upstream trouble:
    failures are part of the result, per resource."""
    settings = rt.config.settings
    started_at, started = time.time(), time.monotonic()
    deadline = started + settings.refresh_timeout
    calls: list[Call] = []
    resources = {r: ResourceResult() for r in RESOURCES}

    def record(call: Call) -> None:
        calls.append(call)
        on_call(rt.name, call)

    def failed(error: str) -> Refresh:
        for r in resources.values():
            r.error = r.error or error
        return _finish(rt, False, error, calls, resources, None, started_at)

    if rt.credentials is None:
        return failed(rt.load_error or "kubeconfig not loaded")

    client = KubeClient(session, rt.credentials, settings, record)
    expected = rt.last_refresh_seconds or 0.0
    reducer = ClusterReducer()
    limit = asyncio.Semaphore(settings.concurrency)

    async def list_all(resource: str) -> None:
        result = resources[resource]
        t0 = time.monotonic()
        feed: _Feed | None = None
        async with limit:
            try:
                token = ""
                while True:
                    n = result.pages + 1
                    if n > settings.max_pages:
                        raise UpstreamError(
                            "invalid", f"more than {settings.max_pages} pages; continue never ends"
                        )
                    if feed is None:
                        feed = _Feed(client, resource, token, n, deadline, settings.max_pages)
                    fetched, guess = await feed.get()
                    result.pages = n
                    size = len(fetched.body)
                    try:
                        steps = reducer.adding_page(resource, fetched.body)
                        page = await run_sliced(steps, expected)
                    except ValueError as e:
                        error = f"page {n}: {e}"
                        client.report(resource, n, "invalid", fetched.seconds, size, error)
                        raise UpstreamError("invalid", error) from None
                    client.report(resource, n, "200", fetched.seconds, size)
                    del fetched
                    result.objects += page.items
                    result.malformed += page.malformed
                    token = page.continue_token
                    if not token:
                        break
                    if token != guess:  # the feed guessed wrong, or could not guess
                        feed.close()
                        feed = None
                result.ok = True
            except UpstreamError as e:
                result.error = f"{resource}: {e}"
                rt.errors_total[resource] += 1
            finally:
                if feed is not None:
                    feed.close()
                result.seconds = time.monotonic() - t0

    async def render_join(join: Join) -> Rendered:
        """Join, build and render one group of lists as soon as they have all ended."""
        await asyncio.wait([lists[r] for r in join.lists])
        complete = frozenset(r for r in join.lists if resources[r].ok)
        state = await run_sliced(reducer.joining(join, complete), expected)
        rt.churn.update(state)  # only the snapshots group's state changes it
        families = await run_sliced(building_group(join, state, rt.churn), expected)
        return await run_sliced(rendering(families, rt.name), expected)

    lists = {r: asyncio.create_task(list_all(r)) for r in RESOURCES}
    try:
        parts = await asyncio.gather(*(render_join(join) for join in JOINS))
        await asyncio.gather(*lists.values())  # a bug in a list raises here
    finally:
        for task in lists.values():
            task.cancel()
    core_failed = [r for r in CORE_RESOURCES if not resources[r].ok]
    if core_failed:
        return failed(resources[core_failed[0]].error or "core resources failed")
    complete = frozenset(r for r, res in resources.items() if res.ok)
    head = render(collection_families(True, resources, rt.errors_total), rt.name)
    rendered = Rendered(
        tuple(chain(head.text, *(p.text for p in parts))),
        tuple(chain(head.openmetrics, *(p.openmetrics for p in parts))),
    )
    state = reducer.state(complete)
    failures = [res.error for res in resources.values() if res.error]
    error = f"partial data: {'; '.join(failures)}" if failures else None
    return _finish(rt, True, error, calls, resources, state, started_at, rendered)


class _Feed:
    """The pages of one list, fetched up to ``AHEAD`` pages ahead of their decoding.

    Each page's continue token is guessed from its tail (``peek_continue``) as soon as it
    arrives, so the next request goes out at once, not after the decode and reduce of
    this page, which may wait behind other clusters' work for the CPU. Over a real network
    a page's round trip then overlaps the exporter's work on the pages before it. The
    reader checks every guess against the decoded page and starts a new feed from the
    true token when they differ (or when the server's bodies allow no guess)."""

    def __init__(
        self,
        client: KubeClient,
        resource: str,
        token: str,
        first: int,
        deadline: float,
        last: int,
    ) -> None:
        self._queue: asyncio.Queue[tuple[Fetched, str] | BaseException] = asyncio.Queue(AHEAD)
        self._task = asyncio.get_running_loop().create_task(
            self._run(client, resource, token, first, deadline, last)
        )

    async def _run(
        self, client: KubeClient, resource: str, token: str, n: int, deadline: float, last: int
    ) -> None:
        try:
            while True:
                fetched = await client.fetch_page(resource, token, deadline, n)
                token = peek_continue(fetched.body)
                await self._queue.put((fetched, token))
                if not token or n >= last:
                    return
                n += 1
        except Exception as e:  # handed to the reader, who raises it
            await self._queue.put(e)

    async def get(self) -> tuple[Fetched, str]:
        """The next page and the token the feed guessed for the page after it."""
        if self._queue.empty() and self._task.done():  # a reader bug, not a hang
            raise RuntimeError("the page feed ended before the list did")
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._task.cancel()


def failed_refresh(rt: ClusterRuntime, error: str, started_at: float) -> Refresh:
    """A refresh that produced nothing servable, with ``error`` on every resource."""
    resources = {r: ResourceResult(error=error) for r in RESOURCES}
    return _finish(rt, False, error, [], resources, None, started_at)


def _finish(
    rt: ClusterRuntime,
    ok: bool,
    error: str | None,
    calls: list[Call],
    resources: dict[str, ResourceResult],
    state: ClusterState | None,
    started_at: float,
    rendered: Rendered | None = None,
) -> Refresh:
    s = rt.config.settings
    if rendered is None:  # a failed refresh: a few small families, rendered on the spot
        rendered = render(collection_families(ok, resources, rt.errors_total), rt.name)
    return Refresh(
        cluster=rt.name,
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
    """How the refresh went, per resource: rendered with the Longhorn data."""
    names = sorted(resources)

    def per_resource(name: str, help_: str, kind: str, value: Callable[[str], float]) -> Family:
        return Family(name, kind, help_, ("resource",), [((r,), value(r)) for r in names])

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
        ),
        per_resource(
            "longhorn_exporter_list_duration_seconds",
            "Time to list all pages of this resource in the last refresh.",
            "gauge",
            lambda r: resources[r].seconds,
        ),
        per_resource(
            "longhorn_exporter_malformed_objects",
            "Objects skipped in the last refresh because they did not decode.",
            "gauge",
            lambda r: float(resources[r].malformed),
        ),
        per_resource(
            "longhorn_exporter_scrape_errors_total",
            "Failed list attempts since the exporter started.",
            "counter",
            lambda r: float(errors_total[r]),
        ),
    ]


def head_families(
    success: bool, duration: float, timeout: float, refresh: Refresh | None
) -> list[Family]:
    """The per-probe part of the answer, in front of the refresh's rendered bytes."""
    fams = [
        Family(
            "probe_success",
            "gauge",
            "1 when fresh-enough Longhorn data was served.",
            (),
            [((), 1.0 if success else 0.0)],
        ),
        Family(
            "probe_duration_seconds",
            "gauge",
            "How long this probe took.",
            (),
            [((), duration)],
        ),
        Family(
            "probe_timeout_seconds",
            "gauge",
            "The timeout this probe ran under.",
            (),
            [((), timeout)],
        ),
    ]
    if refresh is None:
        fams.append(
            Family(
                "longhorn_up",
                "gauge",
                "1 when the API server answered and served Longhorn's resources in the data "
                "being served.",
                (),
                [((), 0.0)],
            )
        )
    else:
        fams.append(
            Family(
                "longhorn_exporter_data_age_seconds",
                "gauge",
                "Age of the data being served.",
                (),
                [((), round(refresh.age(), 3))],
            )
        )
    return fams


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def probe_log(
    cluster: str,
    started_at: float,
    timeout: float,
    header: str | None,
    source: str,
    refresh: Refresh | None,
    success: bool,
    duration: float,
) -> str:
    """What one probe did, for ``?debug=true`` and the triage page. Built only from
    statuses, timings and error texts that were redacted where they were made."""
    lines = [
        f"Probe of cluster {cluster!r} started {_when(started_at)}",
        f"Timeout {timeout:.2f}s (scrape timeout header: {header or 'absent'})",
    ]
    if source == "hit" and refresh is not None:
        lines.append(f"Data: from cache, refreshed {refresh.age():.1f}s ago")
    elif source == "miss":
        lines.append("Data: refreshed for this probe")
    elif source == "stale" and refresh is not None:
        lines.append(
            f"Data: STALE: the refresh did not finish within {timeout:.2f}s; serving the last "
            f"good data, {refresh.age():.1f}s old (it goes on in the background)"
        )
    else:
        lines.append(
            f"Data: NONE: the refresh did not finish within {timeout:.2f}s and there is no "
            "good data younger than max_staleness (it goes on in the background)"
        )
    if refresh is not None:
        lines.append(refresh.log())
    lines.append(f"Probe {'succeeded' if success else 'FAILED'} in {duration:.3f}s")
    return "\n".join(lines) + "\n"
