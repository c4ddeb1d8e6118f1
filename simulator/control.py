"""JSON control endpoints under `/_sim/`, on the simulator's own port.

They let a test or a person drive a simulator running in another process (the demo spawns
one): read request counts, inject and clear faults, set latency, rotate tokens, change a
cluster's spec. They never reveal tokens or keys. Like the simulator itself they are meant for
loopback use only.

    GET    /_sim/clusters                      every cluster's state
    GET    /_sim/clusters/{name}               one cluster: faults, latency, counts, summary
    PUT    /_sim/clusters/{name}/faults        {"fault": "503", "resource": "volumes" | null}
    DELETE /_sim/clusters/{name}/faults
    PUT    /_sim/clusters/{name}/latency       {"seconds": 0.5, "bytes_per_second": 84e6}
    POST   /_sim/clusters/{name}/rotate-token
    PATCH  /_sim/clusters/{name}/spec          {"degraded_volumes": 3, ...}
    POST   /_sim/reset-counts                  {"cluster": name} or {} for all
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .server import SimulatedFleet


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text='{"error": "body is not valid JSON"}', content_type="application/json"
        ) from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be a JSON object"}', content_type="application/json"
        )
    return body


def routes(fleet: SimulatedFleet) -> list[web.RouteDef]:
    """The control routes for `fleet`."""

    def describe(name: str) -> dict[str, Any]:
        state = fleet.cluster(name)
        return {
            "name": name,
            "url": fleet.url_for(name),
            "auth": state.spec.auth,
            "unreachable": state.spec.unreachable,
            "longhorn_version": state.spec.longhorn_version,
            "latency_seconds": state.latency,
            "bytes_per_second": state.bytes_per_second,
            "faults": dict(state.faults),
            "requests": dict(state.requests),
            "lists": dict(state.lists),
            "in_flight": state.in_flight,
            "max_in_flight": state.max_in_flight,
            "summary": fleet.summary(name),
            "malformed": [list(pair) for pair in fleet.malformed(name)],
        }

    def guarded(handler: Any) -> Any:
        """Map unknown clusters to 404 and bad values to 400, with a JSON error."""

        async def wrapper(request: web.Request) -> web.StreamResponse:
            name = request.match_info.get("name")
            if name is not None and name not in fleet.clusters:
                return _error(404, f"no simulated cluster named {name!r}")
            try:
                return await handler(request, name)
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))

        return wrapper

    async def list_clusters(request: web.Request, name: str | None) -> web.Response:
        return web.json_response({"clusters": [describe(n) for n in fleet.clusters]})

    async def get_cluster(request: web.Request, name: str) -> web.Response:
        return web.json_response(describe(name))

    async def put_fault(request: web.Request, name: str) -> web.Response:
        body = await _json_body(request)
        if "fault" not in body:
            raise ValueError('body needs "fault", e.g. {"fault": "503", "resource": "volumes"}')
        fleet.set_fault(name, body["fault"], body.get("resource"))
        return web.json_response(describe(name))

    async def clear_faults(request: web.Request, name: str) -> web.Response:
        fleet.clear_faults(name)
        return web.json_response(describe(name))

    async def put_latency(request: web.Request, name: str) -> web.Response:
        body = await _json_body(request)
        seconds = body.get("seconds")
        rate = body.get("bytes_per_second", 0)
        for value in (seconds, rate):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError('body needs a number "seconds" (and "bytes_per_second")')
        fleet.set_latency(name, float(seconds), float(rate))
        return web.json_response(describe(name))

    async def rotate(request: web.Request, name: str) -> web.Response:
        fleet.rotate_token(name)
        return web.json_response(describe(name))

    async def patch_spec(request: web.Request, name: str) -> web.Response:
        await fleet.update_cluster(name, **await _json_body(request))
        return web.json_response(describe(name))

    async def reset_counts(request: web.Request, name: str | None) -> web.Response:
        cluster = (await _json_body(request)).get("cluster")
        if cluster is not None and cluster not in fleet.clusters:
            return _error(404, f"no simulated cluster named {cluster!r}")
        fleet.reset_counts(cluster)
        return web.json_response({"reset": cluster or "all"})

    one = "/_sim/clusters/{name}"
    return [
        web.get("/_sim/clusters", guarded(list_clusters)),
        web.get(one, guarded(get_cluster)),
        web.put(f"{one}/faults", guarded(put_fault)),
        web.delete(f"{one}/faults", guarded(clear_faults)),
        web.put(f"{one}/latency", guarded(put_latency)),
        web.post(f"{one}/rotate-token", guarded(rotate)),
        web.patch(f"{one}/spec", guarded(patch_spec)),
        web.post("/_sim/reset-counts", guarded(reset_counts)),
    ]
