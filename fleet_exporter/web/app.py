"""The HTTP app: routes, parameter checks and response shapes; the work is elsewhere.

``/probe`` accepts only names of configured clusters, so the exporter can never be used
to reach an address of the caller's choosing (the open-proxy complaint every probe-style
exporter gets). A failing cluster is an HTTP 200 with ``probe_success 0``: Prometheus'
``up`` stays about the exporter itself, as with blackbox_exporter.

State-changing endpoints (``POST /-/reload``) are off unless asked for
(``--web.enable-lifecycle``, Prometheus' flag and default: SIGHUP reloads as well), and
never serve a request a browser sent on behalf of a page of another origin
(``same_origin_only``): a page anywhere on the web must not be able to make a
scraper's browser reload the fleet's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from urllib.parse import urlsplit

from aiohttp import web

from ..config import ConfigError
from ..fleet import Fleet
from ..watch import Watch
from . import FLEET, pages
from .probe import (
    OPENMETRICS_TYPE,
    PROBE_SLOTS,
    TEXT_TYPE,
    ProbeSlots,
    accepts_gzip,
    handle_probe,
    wants_openmetrics,
)

log = logging.getLogger(__name__)

ENABLE_LIFECYCLE = web.AppKey("enable_lifecycle", bool)
# What an HTML form (or a no-cors fetch) can send without a CORS preflight, which the
# exporter never grants: any other type proves the request was not made by a page.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.rstrip("\n") + "\n", content_type="text/plain")


def shard_of(name: str, modulus: int) -> int:
    """The shard Prometheus' ``hashmod`` relabel action puts ``name`` in."""
    return int.from_bytes(hashlib.md5(name.encode()).digest()[8:], "big") % modulus  # noqa: S324


async def handle_targets(request: web.Request) -> web.Response:
    """Prometheus HTTP service discovery: every configured cluster, one group each (so each
    carries its own extra labels). ``?shard=i&of=n`` keeps one hashmod shard."""
    fleet = request.app[FLEET]
    shard, of = request.query.get("shard"), request.query.get("of")
    if (shard is None) != (of is None):
        return _plain(400, "shard= and of= go together")
    names = sorted(fleet.clusters)
    if shard is not None and of is not None:
        try:
            i, n = int(shard), int(of)
            if n < 1 or not 0 <= i < n:
                raise ValueError
        except ValueError:
            return _plain(400, "shard= and of= need whole numbers with 0 <= shard < of")
        names = [c for c in names if shard_of(c, n) == i]
    groups = [{"targets": [c], "labels": dict(fleet.clusters[c].config.labels)} for c in names]
    return web.json_response(groups)


async def handle_metrics(request: web.Request) -> web.Response:
    """The exporter's own metrics: a body rendered at most once a second (selfmetrics),
    in the format and encoding asked for, as ``/probe`` negotiates them."""
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    compressed = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    body = request.app[FLEET].metrics.exposition(openmetrics, compressed)
    headers = {
        "Content-Type": OPENMETRICS_TYPE if openmetrics else TEXT_TYPE,
        "Vary": "Accept, Accept-Encoding",
    }
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def handle_healthz(request: web.Request) -> web.Response:
    return _plain(200, "Healthy")


async def handle_ready(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    if not fleet.ready:
        return _plain(503, "loading clusters")
    return _plain(200, f"Ready: {len(fleet.clusters)} clusters")


async def handle_reload(request: web.Request) -> web.Response:
    if not request.app[ENABLE_LIFECYCLE]:
        return _plain(
            403,
            "Forbidden: reloading over HTTP is off; start with --web.enable-lifecycle, "
            "or send SIGHUP",
        )
    try:
        result = await request.app[FLEET].reload("http")
    except ConfigError as e:
        return _plain(500, f"failed to reload config: {e}")
    return _plain(200, f"reloaded: {result.summary()}")


@web.middleware
async def security_headers(request: web.Request, handler):
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def cross_origin(request: web.Request) -> str | None:
    """Why this request looks sent by a browser for a page of another origin, or None.

    Browsers send ``Origin`` on every cross-origin POST, and ``Sec-Fetch-Site`` on every
    request to a trustworthy origin (https, localhost); a page can only post the form
    content types without a preflight. Scripts and curl send none of these."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
        return "Origin does not match Host"
    if request.content_type in FORM_TYPES:
        return f"a form's content type ({request.content_type})"
    return None


@web.middleware
async def same_origin_only(request: web.Request, handler):
    """Refuse state-changing requests a page of another origin could have made."""
    if request.method not in SAFE_METHODS:
        reason = cross_origin(request)
        if reason is not None:
            return _plain(
                403,
                f"Forbidden: cross-origin request refused ({reason}); "
                f"{request.method} {request.path} from a script or curl instead",
            )
    return await handler(request)


MAX_BODY = 64 * 1024  # no endpoint takes a body; this is generous for POST /-/reload


@web.middleware
async def bounded_body(request: web.Request, handler):
    """Refuse large bodies up front: aiohttp's ``client_max_size`` only applies when a
    handler reads the body, and none of ours does."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _plain(413, f"request body too large (limit {MAX_BODY} bytes)")
    return await handler(request)


def create_app(
    fleet: Fleet, *, watch_interval: float = 0.0, enable_lifecycle: bool = False
) -> web.Application:
    """Routes only. The fleet is started and closed with the app; with ``watch_interval``
    (seconds, 0 = off) its directory is checked for changes that often (``watch``).
    ``enable_lifecycle`` lets ``POST /-/reload`` reload (else it is a 403 saying how to
    turn it on)."""
    app = web.Application(
        middlewares=[security_headers, same_origin_only, bounded_body], client_max_size=MAX_BODY
    )
    app[FLEET] = fleet
    app[ENABLE_LIFECYCLE] = enable_lifecycle
    slots = app[PROBE_SLOTS] = ProbeSlots(fleet)
    fleet.metrics.probes_in_flight.set_function(lambda: slots.busy)
    fleet.metrics.probes_in_flight_limit.set_function(lambda: slots.limit)

    async def lifecycle(app: web.Application):
        watch = None
        if watch_interval > 0:
            watch = Watch(
                fleet.directory, watch_interval, lambda: fleet.reload("watch"), fleet.metrics
            )
            await watch.baseline()
        await fleet.start()
        watching = asyncio.create_task(watch.run(), name="watch") if watch else None
        yield
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await fleet.close()

    app.cleanup_ctx.append(lifecycle)
    pages.setup(app)
    app.router.add_get("/probe", handle_probe)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/targets", handle_targets)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/-/healthy", handle_healthz)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_post("/-/reload", handle_reload)
    return app
