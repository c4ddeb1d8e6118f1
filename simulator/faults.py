"""Misbehaving responses for the simulated API server.

Each function answers one request the way a broken or hostile upstream would: kube-apiserver
`Status` errors, bodies that stop, trickle, lie about their type or never end, connections
that drop. Every loop here is bounded by the body size or a deadline, and a client that hangs
up ends the handler (the server runs with handler cancellation on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import zlib
from dataclasses import dataclass

from aiohttp import web

MiB = 1024 * 1024
JSON = "application/json"

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
EXPIRED_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)


@dataclass
class FaultSettings:
    """Sizes and pacing of the body-level faults; tests shrink them to stay fast."""

    drip_bytes: int = 64
    drip_interval: float = 0.05
    oversized_bytes: int = 200 * MiB
    hang_seconds: float = 3600.0
    retry_after: str = "3600"  # the "throttle" fault's Retry-After: seconds or an HTTP date
    redirect_to: str = "https://redirected.invalid:6443"  # the "redirect" fault's new base


def api_headers() -> dict[str, str]:
    """Headers kube-apiserver puts on every answer."""
    return {"Audit-Id": str(uuid.uuid4()), "Cache-Control": "no-cache, private"}


def status_response(
    code: int,
    message: str,
    details: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A kube-apiserver `Status` error body."""
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "Unknown"),
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return web.Response(
        status=code,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type=JSON,
        headers={**api_headers(), **(headers or {})},
    )


def http_fault(code: int, resource: str, namespace: str) -> web.Response:
    """The error kube-apiserver gives for `code` on a list of `resource`."""
    if code == 401:
        return status_response(401, "Unauthorized")
    if code == 403:
        user = "system:serviceaccount:monitoring:fleet-exporter"
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        return status_response(
            403,
            f'{resource}.longhorn.io is forbidden: User "{user}" cannot list resource '
            f'"{resource}" in API group "longhorn.io"{where}',
            {"group": "longhorn.io", "kind": resource},
        )
    if code == 404:
        return not_found()
    if code == 429:
        return status_response(
            429,
            "Too many requests, please try again later.",
            {"retryAfterSeconds": 1},
            {"Retry-After": "1"},
        )
    if code == 500:
        cause = "etcdserver: request timed out"
        return status_response(
            500, f"Internal error occurred: {cause}", {"causes": [{"message": cause}]}
        )
    return status_response(503, "the server is currently unable to handle the request")


def throttle(settings: FaultSettings) -> web.Response:
    """429 with a Retry-After longer than any scrape, as API Priority and Fairness or a
    proxy in front of an overloaded API server sends."""
    seconds = settings.retry_after
    details = {"retryAfterSeconds": int(seconds)} if seconds.isdigit() else None
    return status_response(
        429, "Too many requests, please try again later.", details, {"Retry-After": seconds}
    )


def redirect(request: web.Request, settings: FaultSettings) -> web.Response:
    """A 302 to the same API path under ``settings.redirect_to``, as a misconfigured load
    balancer would send: a client that follows it takes another host's answer for this
    cluster's."""
    location = f"{settings.redirect_to.rstrip('/')}/{request.match_info['tail']}"
    if request.query_string:
        location += f"?{request.query_string}"
    return web.Response(status=302, headers={**api_headers(), "Location": location})


def not_found() -> web.Response:
    return status_response(404, "the server could not find the requested resource", {})


def expired() -> web.Response:
    return status_response(410, EXPIRED_MESSAGE)


def truncated(body: bytes) -> web.Response:
    """A well-framed response whose JSON stops half way."""
    return web.Response(body=body[: len(body) // 2], content_type=JSON, headers=api_headers())


def truncated_gzip(body: bytes) -> web.Response:
    """The page gzipped, then cut in half: a well-framed body whose gzip stream stops."""
    gz = zlib.compress(body, 1, wbits=31)
    headers = {**api_headers(), "Content-Encoding": "gzip"}
    return web.Response(body=gz[: len(gz) // 2], content_type=JSON, headers=headers)


def unknown_encoding(body: bytes) -> web.Response:
    """A body labelled with a Content-Encoding nobody asked for (brotli)."""
    headers = {**api_headers(), "Content-Encoding": "br"}
    return web.Response(body=body, content_type=JSON, headers=headers)


def invalid_json(kind: str) -> web.Response:
    body = (
        b'{"apiVersion":"longhorn.io/v1beta2","items":[{"metadata":{"name":"x"}},,],"kind":"'
        + kind.encode()
        + b'List"'
    )
    return web.Response(body=body, content_type=JSON, headers=api_headers())


def wrong_content_type() -> web.Response:
    """What an authenticating proxy in front of the API server answers: a login page."""
    html = (
        "<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
        "<h1>Sign in to continue</h1><form method='post' action='/login'>"
        "<input name='user'><input name='password' type='password'></form></body></html>"
    )
    return web.Response(text=html, content_type="text/html", headers=api_headers())


def gzip_bomb(bomb: bytes) -> web.Response:
    """A small gzip body that inflates to `FaultSettings.oversized_bytes` of JSON."""
    headers = {**api_headers(), "Content-Encoding": "gzip"}
    return web.Response(body=bomb, content_type=JSON, headers=headers)


def make_bomb(item: bytes, kind: str, size: int) -> bytes:
    """gzip of a list of `kind` repeating `item` until it is at least `size` bytes, made
    chunk by chunk so the inflated body never exists here."""
    head, chunk, tail = _oversized_parts(item, kind)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(head)]
    inflated = len(head)
    while inflated < size:
        out.append(compressor.compress(chunk))
        inflated += len(chunk)
    out.append(compressor.compress(tail))
    out.append(compressor.flush())
    return b"".join(out)


def _oversized_parts(item: bytes, kind: str) -> tuple[bytes, bytes, bytes]:
    """Head, a ~1 MiB repeatable chunk of items and the tail of a valid-looking list."""
    head = b'{"apiVersion":"longhorn.io/v1beta2","items":[' + item
    per_chunk = max(1, MiB // (len(item) + 1))
    chunk = (b"," + item) * per_chunk
    tail = b'],"kind":"' + kind.encode() + b'List","metadata":{"resourceVersion":"1"}}'
    return head, chunk, tail


async def oversized(
    request: web.Request, item: bytes, kind: str, settings: FaultSettings
) -> web.StreamResponse:
    """Stream at least `settings.oversized_bytes` of valid-looking JSON, chunked (no
    Content-Length), until done or the client gives up."""
    head, chunk, tail = _oversized_parts(item, kind)
    resp = web.StreamResponse(headers={**api_headers(), "Content-Type": JSON})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    sent = len(head)
    await resp.write(head)
    while sent < settings.oversized_bytes:
        await resp.write(chunk)
        sent += len(chunk)
    await resp.write(tail)
    await resp.write_eof()
    return resp


async def slow_drip(
    request: web.Request, body: bytes, settings: FaultSettings
) -> web.StreamResponse:
    """Announce the full body, then send it a few bytes at a time: each read succeeds fast,
    so only a total deadline stops it."""
    resp = web.StreamResponse(headers={**api_headers(), "Content-Type": JSON})
    resp.content_length = len(body)
    await resp.prepare(request)
    for offset in range(0, len(body), settings.drip_bytes):
        await resp.write(body[offset : offset + settings.drip_bytes])
        await asyncio.sleep(settings.drip_interval)
    await resp.write_eof()
    return resp


async def reset(request: web.Request, body: bytes) -> web.StreamResponse:
    """Send headers and half the body, then drop the connection."""
    resp = web.StreamResponse(headers={**api_headers(), "Content-Type": JSON})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        # Let the half body reach the socket first (bounded: about a second at most).
        for _ in range(1000):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        transport.abort()
    return resp


async def hang(stopping: asyncio.Event, settings: FaultSettings) -> web.Response:
    """Never answer: wait until the client hangs up (the handler is cancelled), the
    simulator stops, or `hang_seconds` pass; then answer 504 as kube-apiserver would."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), settings.hang_seconds)
    return status_response(504, "Timeout: request did not complete within the allowed duration")
