"""The HTTP app: routes, parameter checks and response shapes; the work is elsewhere.

``/probe`` accepts only names of configured clusters, so the exporter can never be used
to reach an address of the caller's choosing (the open-proxy complaint every probe-style
exporter gets). A failing cluster is an HTTP 200 with ``probe_success 0``: Prometheus'
``up`` stays about the exporter itself, as with blackbox_exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from ..config import ConfigError
from ..fleet import FLEET, Fleet
from ..watch import Watch
from . import pages
from .probe import PROBE_SLOTS, ProbeSlots, handle_probe

log = logging.getLogger(__name__)


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


async def handle_healthz(request: web.Request) -> web.Response:
    return _plain(200, "Healthy")


async def handle_ready(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    if not fleet.ready:
        return _plain(503, "loading clusters")
    return _plain(200, f"Ready: {len(fleet.clusters)} clusters")


async def handle_reload(request: web.Request) -> web.Response:
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


MAX_BODY = 64 * 1024  # no endpoint takes a body; this is generous for POST /-/reload


@web.middleware
async def bounded_body(request: web.Request, handler):
    """Refuse large bodies up front: aiohttp's ``client_max_size`` only applies when a
    handler reads the body, and none of ours does."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _plain(413, f"request body too large (limit {MAX_BODY} bytes)")
    return await handler(request)


def create_app(fleet: Fleet, watch_interval: float = 0.0) -> web.Application:
    """Routes only. The fleet is started and closed with the app; with ``watch_interval``
    (seconds, 0 = off) its directory is checked for changes that often (``watch``)."""
    app = web.Application(middlewares=[security_headers, bounded_body], client_max_size=MAX_BODY)
    app[FLEET] = fleet
    app[PROBE_SLOTS] = ProbeSlots(200)

    async def lifecycle(app: web.Application):
        watch = None
        if watch_interval > 0:
            watch = Watch(
                fleet.directory, watch_interval, lambda: fleet.reload("watch"), fleet.metrics
            )
            await watch.baseline()
        await fleet.start()
        assert fleet.config is not None
        app[PROBE_SLOTS].limit = fleet.config.server.max_concurrent_probes
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
    app.router.add_get("/metrics", make_aiohttp_handler(fleet.metrics.registry))
    app.router.add_get("/targets", handle_targets)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/-/healthy", handle_healthz)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_post("/-/reload", handle_reload)
    return app
