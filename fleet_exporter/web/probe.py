"""``/probe``: one configured cluster's Longhorn metrics, the blackbox way.

Only names of configured clusters are accepted, so the exporter can never be used to
reach an address of the caller's choosing (the open-proxy complaint every probe-style
exporter gets). A failing cluster is an HTTP 200 with ``probe_success 0``: Prometheus'
``up`` stays about the exporter itself, as with blackbox_exporter. The answer is a small
per-probe head (``probe_success``, durations, data age) in front of the refresh's
rendered bytes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from ..config import CLUSTER_NAME, ServerSettings
from ..exposition import EOF_LINE, Body, Family, encode, gzip_member, inflate, inflating
from ..fleet import Fleet
from ..history import ProbeRecord, new_id
from ..prober import Refresh
from ..units import timestamp
from . import FLEET

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0  # blackbox_exporter's, when Prometheus sends no scrape timeout
TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _media_ranges(header: str) -> list[tuple[str, dict[str, str]]]:
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media:
            kv = {}
            for p in params:
                k, _, v = p.partition("=")
                kv[k.strip().lower()] = v.strip().strip('"')
            ranges.append((media.lower(), kv))
    return ranges


def _q(params: dict[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 0.0


def wants_openmetrics(accept: str) -> bool:
    """True when the client prefers OpenMetrics 1.0.0 over text 0.0.4 (q-values honoured,
    ties go to OpenMetrics, which is what Prometheus asks for first)."""
    om = text = 0.0
    for media, params in _media_ranges(accept):
        if media == "application/openmetrics-text" and params.get("version", "1.0.0") == "1.0.0":
            om = max(om, _q(params))
        elif media in ("text/plain", "text/*", "*/*"):
            text = max(text, _q(params))
    return om > 0 and om >= text


def accepts_gzip(accept_encoding: str) -> bool:
    return any(
        media == "gzip" and _q(params) > 0 for media, params in _media_ranges(accept_encoding)
    )


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.rstrip("\n") + "\n", content_type="text/plain")


def _shown(value: str) -> str:
    """A caller-supplied value, safe to echo in a one-line plain-text error."""
    return repr(value[:64] + ("..." if len(value) > 64 else ""))


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


class ProbeSlots:
    """Probes in flight and their limit (a counter, not a semaphore: over the limit we
    refuse at once instead of queueing behind slow clusters). The limit follows the fleet:
    ``server.max_concurrent_probes`` for the clusters configured now (``auto`` grows with
    them), read at each admission, so a reload changes it at once."""

    def __init__(self, fleet: Fleet):
        self._fleet = fleet
        self.busy = 0

    @property
    def limit(self) -> int:
        config = self._fleet.config
        server = config.server if config is not None else ServerSettings()
        return server.probe_limit(len(self._fleet.clusters))


PROBE_SLOTS = web.AppKey("probe_slots", ProbeSlots)


async def handle_probe(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    query = request.query
    names = query.getall("cluster", []) + query.getall("target", [])
    if len(names) != 1:
        fleet.metrics.rejected.labels("bad_request").inc()
        return _plain(400, "exactly one cluster= (or target=) parameter is required")
    name = names[0]
    rt = fleet.clusters.get(name) if CLUSTER_NAME.fullmatch(name) else None
    if rt is None:
        fleet.metrics.rejected.labels("unknown_cluster").inc()
        return _plain(400, f"unknown cluster {_shown(name)}: not configured in this exporter")
    header = request.headers.get(TIMEOUT_HEADER)
    settings = rt.config.settings
    try:
        timeout = probe_timeout(header, settings.timeout, settings.timeout_offset)
    except ValueError:
        fleet.metrics.rejected.labels("bad_request").inc()
        return _plain(400, f"cannot parse {TIMEOUT_HEADER} {_shown(header or '')} as seconds")

    limiter = request.app[PROBE_SLOTS]
    if limiter.busy >= limiter.limit:
        fleet.metrics.rejected.labels("overloaded").inc()
        return _plain(503, f"too many probes in flight (limit {limiter.limit}); retry later")
    limiter.busy += 1
    try:
        started_at, started = time.time(), time.monotonic()
        lookup = await fleet.lookup(rt, timeout)
        refresh = lookup.value
        success = refresh is not None and refresh.ok
        duration = time.monotonic() - started
    finally:
        limiter.busy -= 1

    fleet.metrics.probe_done(name, success, duration)
    text_log = probe_log(
        name, started_at, timeout, header, lookup.source, refresh, success, duration
    )
    error = None if success else (refresh.error if refresh else "no data in time")
    rt.history.add(
        ProbeRecord(
            new_id(), started_at, duration, timeout, success, lookup.source, error, text_log
        )
    )
    if not success:
        log.info("probe of %s failed: %s", name, error)

    head = head_families(success, duration, timeout, refresh)
    body = refresh.rendered.body(openmetrics=False) if refresh is not None else NO_BODY
    if query.get("debug", "").lower() in ("true", "1"):
        intro = f"{text_log}\nMetrics that would have been returned:\n".encode()
        payload = Inflated(intro + encode(head, name, eof=False), body, b"", DEBUG_TYPE)
        return web.Response(body=payload)

    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    compressed = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    content_type = OPENMETRICS_TYPE if openmetrics else TEXT_TYPE
    if refresh is not None:
        body = refresh.rendered.body(openmetrics)
    head_text = encode(head, name, openmetrics=openmetrics, eof=False)
    tail = EOF_LINE if openmetrics else b""
    if compressed:
        response = web.Response(body=Parts(gzip_member(head_text, body, tail), content_type))
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = web.Response(body=Inflated(head_text, body, tail, content_type))
    response.headers["Vary"] = "Accept, Accept-Encoding"
    return response


NO_BODY = Body((), 0, 0)
DEBUG_TYPE = "text/plain; charset=utf-8"


class Parts(Payload):
    """A gzip answer sent as the pieces it is kept in, not joined first. Joining a
    2,000-volume cluster's 2.1 MB of cached gzip data took fresh memory on every probe
    (glibc gave the freed block back each time): ~530 page faults per probe. Warm probes
    took 3.4-3.9 ms; sent in pieces, 1.9-2.1 ms, against 1.7 ms for a bare handler
    returning one bytes object (bench/README.md)."""

    def __init__(self, parts: Sequence[bytes], content_type: str) -> None:
        super().__init__(parts, content_type=content_type)
        self._size = sum(map(len, parts))

    async def write(self, writer: AbstractStreamWriter) -> None:
        for part in self._value:
            await writer.write(part)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a gzip answer has no text")


class Inflated(Payload):
    """A plain answer for a client that takes no gzip: ``head``, the body's pieces
    inflated a chunk at a time while they are written (no buffer of the whole text), then
    ``tail``. Content-Length is known beforehand: the body's length is kept with it."""

    def __init__(self, head: bytes, body: Body, tail: bytes, content_type: str) -> None:
        super().__init__(body, content_type=content_type)
        self._head, self._tail = head, tail
        self._size = len(head) + body.size + len(tail)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await writer.write(self._head)
        for chunk in inflating(self._value):
            await writer.write(chunk)
        await writer.write(self._tail)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return (self._head + inflate(self._value) + self._tail).decode(encoding, errors)


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
        f"Probe of cluster {cluster!r} started {timestamp(started_at)}",
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
