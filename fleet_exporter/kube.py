"""The Kubernetes API client: lists of one cluster's custom resources, page by page.

We do not use the ``kubernetes`` package's client for the calls: it has no body cap, its
timeouts default to none, and its async flavour decodes everything into dicts. Here each
request gets a timeout carved out of the refresh's deadline, a byte cap on the body as
sent and again on its inflated size (we inflate gzip ourselves, so a gzip bomb stops at
the cap), and an error class that the metrics and the debug output can name precisely.

Manners towards a struggling or odd API server: a ``Retry-After`` on 429/503 is honoured
when the wait fits before the refresh's deadline, and otherwise fails the call at once,
saying so (and carrying the wait, ``UpstreamError.retry_after``, for a cluster-level
back-off); a redirect is never followed (the Kubernetes API never redirects a list, and
data from another host must not pass for the cluster's).

``KubeClient.list`` owns pagination: it fetches each page's successor as soon as the page
has arrived (its continue token read from the body's tail), up to ``knobs.AHEAD`` pages
ahead, and hands each body to the caller's reader, which decodes it and returns the true
token; a wrong guess restarts the fetching from the true one.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import msgspec
from isal import isal_zlib

from . import __version__
from .config import Settings
from .credentials import Credentials, CredentialsError, redact
from .knobs import AHEAD, CONNECTIONS_PER_CLUSTER, shrink_tls_read_buffer
from .limits import Hold, MemoryBudget, MemoryShareExceeded

LONGHORN_API = "/apis/longhorn.io/v1beta2"
USER_AGENT = f"fleet-exporter/{__version__}"
# Statuses worth one more try: the server said "later" or the request never got an answer.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
NO_ROOM = "the fleet's memory budget had no room before the deadline"
MAX_ATTEMPTS = 3
BACKOFF = 0.2  # seconds before the 2nd attempt, doubled for the 3rd


class UpstreamError(Exception):
    """One failed API call. ``code`` is an HTTP status or an error class, for metrics.
    ``retry_after``: the seconds the server asked us to wait (429/503 ``Retry-After``)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after


@dataclass(slots=True, frozen=True)
class Fetched:
    """A page as it arrived: the body, inflated, how long the request took, and the bytes
    it holds in the fleet's memory budget until it is released."""

    body: bytes | bytearray
    seconds: float
    hold: Hold


class Call(msgspec.Struct, frozen=True, gc=False):
    """One upstream request, as the debug output and the self-metrics report it. Plain
    values, so the garbage collector need not track it (every cached refresh keeps one
    per page: ~150 for a big cluster, 5,000 over 500 small ones)."""

    resource: str
    page: int
    code: str  # "200", "403", "timeout", ...
    seconds: float
    bytes: int
    error: str | None = None


# kube-apiserver gzips list bodies over 128 KiB (level 1, ~10x here). We inflate each body
# on the event loop once it has arrived, with ISA-L (``isal``: ~1 ms for a 1 MB page, half
# of zlib's). A worker thread (zlib lets go of the GIL) used the other core, but each body
# then waited for the GIL twice and behind every other cluster's bodies: in the
# benchmark's sweep over a 25 ms network, pages took 38 ms on average to come back from
# the thread, on the biggest cluster's chain of 80 pages (bench/README.md). Inflating
# chunk by chunk as the body arrives cost more CPU than either.
GZIP = frozenset({"gzip", "x-gzip"})
PEEK_BYTES = 64 * 1024  # inflated to tell a body too big by its trailer from a broken one
IDENTITY = frozenset({"", "identity"})


def new_session(
    connections: int = CONNECTIONS_PER_CLUSTER, keepalive: float = 60.0
) -> aiohttp.ClientSession:
    """A session for one cluster: its own pool of at most ``connections`` connections, so a
    hung API server holds only its own, and idle ones close after ``keepalive`` seconds
    (long enough to be reused by the next scrape's refresh)."""
    shrink_tls_read_buffer()
    connector = aiohttp.TCPConnector(
        limit=connections,
        limit_per_host=connections,
        keepalive_timeout=keepalive,
        ttl_dns_cache=60,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        # The kubeconfig's proxy-url decides; HTTPS_PROXY in our environment does not.
        trust_env=False,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
        },
        # We inflate list bodies ourselves, with a cap on the inflated size (``_inflate``).
        auto_decompress=False,
    )


# Reads one page: decodes and folds in the body, and returns the page's continue token
# ("" after the last page). A ValueError names a page that is not what it should be.
Reader = Callable[[bytes | bytearray], Awaitable[str]]


class KubeClient:
    """Lists Longhorn resources of one cluster."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        settings: Settings,
        on_call: Callable[[Call], None] = lambda call: None,
        *,
        cluster: str = "",
        budget: MemoryBudget | None = None,
    ):
        """``budget`` bounds the bytes of list bodies in flight across the fleet, each
        accounted to ``cluster`` (no bound without one)."""
        self.session = session
        self.credentials = credentials
        self.settings = settings
        self.on_call = on_call
        self.cluster = cluster
        self.budget = budget or MemoryBudget(1 << 62)
        base = credentials.endpoint.server.rstrip("/")
        self._base = f"{base}{LONGHORN_API}/namespaces/{quote(settings.namespace, safe='')}/"

    async def list(self, resource: str, read: Reader, deadline: float) -> None:
        """Every page of ``resource``, in order, each body handed to ``read``. Raises
        UpstreamError for a failed call, a page ``read`` refuses (``invalid``) or more than
        ``max_pages`` pages (a server whose continue tokens never end)."""
        limit = self.settings.max_pages
        token, n = "", 0
        pages: _Pages | None = None
        try:
            while True:
                n += 1
                if n > limit:
                    raise UpstreamError("invalid", f"more than {limit} pages; continue never ends")
                if pages is None:
                    pages = _Pages(self, resource, token, n, deadline)
                fetched, guess = await pages.next()
                size = len(fetched.body)
                try:
                    token = await read(fetched.body)
                except ValueError as e:
                    error = f"page {n}: {e}"
                    self.report(resource, n, "invalid", fetched.seconds, size, error)
                    raise UpstreamError("invalid", error) from None
                finally:
                    fetched.hold.release()  # the body is folded in: its bytes are free
                self.report(resource, n, "200", fetched.seconds, size)
                del fetched
                if not token:
                    return
                if token != guess:  # guessed wrong, or could not guess: restart from the truth
                    pages.close()
                    pages = None
        finally:
            if pages is not None:
                pages.close()

    async def fetch_page(
        self, resource: str, continue_token: str, deadline: float, page: int = 1
    ) -> Fetched:
        """One list page, its body decompressed. Raises UpstreamError; never waits past
        ``deadline`` (a ``time.monotonic()`` value). Failed attempts are reported here,
        each with its code; a page that arrives is reported by the caller once it knows
        whether the body was usable (``report``), so a 200 carrying garbage counts as
        ``invalid``."""
        params = {"limit": str(self.settings.page_size)}
        if continue_token:
            params["continue"] = continue_token
        url = self._base + resource
        reloaded = False
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return await self._attempt(url, params, deadline, started)
            except UpstreamError as e:
                self.report(resource, page, e.code, time.monotonic() - started, 0, str(e))
                if e.status == 401 and not reloaded:
                    # Rotated token file, expired OIDC token, replaced Secret: re-read once.
                    reloaded = True
                    try:
                        await self.credentials.reload()
                    except CredentialsError as ce:
                        raise UpstreamError(
                            "auth", f"401 Unauthorized; reload failed: {ce}", 401
                        ) from None
                    continue
                retryable = e.status in RETRY_STATUSES or e.code in ("reset", "connect")
                pause = BACKOFF * 2 ** (attempt - 1)
                if e.retry_after is not None:
                    pause = max(pause, e.retry_after)
                    if time.monotonic() + pause >= deadline - 0.5:
                        wait = math.ceil(e.retry_after)
                        raise UpstreamError(
                            e.code,
                            f"{str(e).rstrip('.')}; retry after {wait}s, "
                            "past this refresh's deadline",
                            e.status,
                            e.retry_after,
                        ) from None
                if (
                    retryable
                    and attempt < MAX_ATTEMPTS
                    and time.monotonic() + pause < deadline - 0.5
                ):
                    await asyncio.sleep(pause)
                    continue
                raise

    async def _attempt(
        self, url: str, params: dict[str, str], deadline: float, started: float
    ) -> Fetched:
        """One GET of a page, its bytes held in the budget until the page is released;
        on any failure they are given back at once."""
        hold = self.budget.hold(self.cluster)
        raw = bytearray()
        try:
            raw, gzipped = await self._get(url, params, deadline, hold)
            body = raw
            if gzipped:
                body = await _inflate(raw, self.settings.max_page_bytes, hold, deadline)
                hold.shrink(len(raw))
                raw = bytearray()
        except (UpstreamError, MemoryShareExceeded, TimeoutError) as e:
            hold.release()
            failure = e
        except BaseException:  # cancelled: the frames stay with the error, the bytes do not
            hold.release()
            raw.clear()
            raise
        else:
            return Fetched(body, time.monotonic() - started, hold)
        # Raised here, outside the handler, and without the frames it came through: an
        # error (or its context) that kept those frames would keep the body they were
        # reading alive, up to the cap, as long as the error travels (two gzip bombs
        # and eight oversized lists each held hundreds of MB past the budget that way).
        if isinstance(failure, MemoryShareExceeded):
            error = UpstreamError("memory", f"refused: {failure}")
        elif isinstance(failure, TimeoutError):  # only the budget's wait raises it here
            error = UpstreamError("memory", NO_ROOM)
        else:
            error = failure.with_traceback(None)
            error.__context__ = None
        del failure
        raise error

    def report(
        self,
        resource: str,
        page: int,
        code: str,
        seconds: float,
        size: int,
        error: str | None = None,
    ) -> None:
        """Count one finished call (metrics, debug output)."""
        self.on_call(Call(resource, page, code, seconds, size, error))

    async def _get(
        self, url: str, params: dict[str, str], deadline: float, hold: Hold
    ) -> tuple[bytearray, bool]:
        """The body as sent (its bytes taken from the budget as they arrive, into
        ``hold``), and whether it is gzipped."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamError("timeout", "no time left before the deadline")
        s = self.settings
        timeout = aiohttp.ClientTimeout(
            total=min(remaining, s.request_timeout),
            sock_connect=min(remaining, s.connect_timeout),
        )
        endpoint = self.credentials.endpoint
        try:
            auth = await self.credentials.authorization()
        except CredentialsError as e:
            raise UpstreamError("auth", str(e)) from None
        headers = {"Authorization": auth} if auth else {}
        try:
            async with self.session.get(
                url,
                params=params,
                headers=headers,
                timeout=timeout,
                ssl=endpoint.ssl,
                server_hostname=endpoint.server_hostname,
                proxy=endpoint.proxy,
                allow_redirects=False,
            ) as resp:
                if 300 <= resp.status < 400:
                    raise UpstreamError(
                        "redirect",
                        f"HTTP {resp.status} redirect to {_location_host(resp)} refused "
                        "(the Kubernetes API never redirects a list)",
                        resp.status,
                    )
                if resp.status != 200:
                    detail = await _status_message(resp)
                    wait = None
                    if resp.status in (429, 503):
                        wait = retry_after(resp.headers.get("Retry-After"))
                    raise UpstreamError(
                        str(resp.status), f"HTTP {resp.status}{detail}", resp.status, wait
                    )
                ctype = resp.content_type
                if ctype != "application/json":
                    raise UpstreamError("invalid", f"unexpected content type {ctype!r}")
                encoding = _encoding(resp)
                if encoding not in IDENTITY and encoding not in GZIP:
                    raise UpstreamError("invalid", f"unsupported Content-Encoding {encoding!r}")
                body = await _read_capped(resp, s.max_page_bytes, hold, deadline)
                return body, encoding in GZIP
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {timeout.total:.1f}s") from None
        except aiohttp.ClientConnectorCertificateError as e:
            raise UpstreamError("tls", f"TLS certificate rejected: {_reason(e)}") from None
        except aiohttp.ClientConnectorSSLError as e:
            raise UpstreamError("tls", f"TLS handshake failed: {_reason(e)}") from None
        except aiohttp.ClientConnectorDNSError as e:
            raise UpstreamError("dns", f"cannot resolve host: {_reason(e)}") from None
        except aiohttp.ClientConnectorError as e:
            raise UpstreamError("connect", f"cannot connect: {_reason(e)}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            raise UpstreamError("reset", f"connection dropped: {_reason(e)}") from None
        except aiohttp.ClientError as e:
            raise UpstreamError("reset", f"request failed: {_reason(e)}") from None
        except OSError as e:
            raise UpstreamError("reset", f"request failed: {e.strerror or e}") from None


class _Pages:
    """The pages of one list from ``token`` on, fetched up to ``AHEAD`` pages ahead of
    their reading. Each page's continue token is guessed from its tail as soon as it
    arrives, so the next request goes out at once, not after this page's decode, which
    may wait behind other clusters' work for the CPU: over a real network a page's round
    trip then overlaps the work on the pages before it."""

    def __init__(
        self, client: KubeClient, resource: str, token: str, first: int, deadline: float
    ) -> None:
        self._queue: asyncio.Queue[tuple[Fetched, str] | BaseException] = asyncio.Queue(AHEAD)
        # The feed is a function of the queue, not a method: a stopped feed's error keeps
        # its frames in its task, and a frame holding ``self`` (which holds the task) would
        # make a cycle only a full garbage collection frees.
        self._task = asyncio.get_running_loop().create_task(
            _feed(self._queue, client, resource, token, first, deadline)
        )

    async def next(self) -> tuple[Fetched, str]:
        """The next page, and the token guessed for the page after it."""
        if self._queue.empty() and self._task.done():  # a reader bug, not a hang
            raise RuntimeError("the page feed ended before the list did")
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop fetching; pages fetched and not read give their bytes back."""
        self._task.cancel()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, BaseException):
                item[0].hold.release()


async def _feed(
    queue: asyncio.Queue[tuple[Fetched, str] | BaseException],
    client: KubeClient,
    resource: str,
    token: str,
    n: int,
    deadline: float,
) -> None:
    """Fetch pages into ``queue`` until the list ends, fails or the feed is stopped."""
    last = client.settings.max_pages
    try:
        while True:
            fetched = await client.fetch_page(resource, token, deadline, n)
            token = peek_continue(fetched.body)
            try:
                await queue.put((fetched, token))
            except BaseException:
                fetched.hold.release()
                del fetched  # stopped: the error's frames keep no page
                raise
            if not token or n >= last:
                return
            n += 1
    except Exception as e:  # handed to the reader, who raises it (without the frames that
        # held the page it came from: they would keep its body alive meanwhile)
        await queue.put(e.with_traceback(None))


class _ListMeta(msgspec.Struct):
    continue_: str | None = msgspec.field(default=None, name="continue")


_LIST_META = msgspec.json.Decoder(_ListMeta)
_META_KEY = b'"metadata":'


def peek_continue(body: bytes | bytearray) -> str:
    """A page's continue token, guessed without decoding the items. kube-apiserver writes
    list keys in sorted order (``apiVersion, items, kind, metadata``), so the list's
    ``metadata`` is the body's last object. A guess: ``""`` when the tail does not look
    like that; the reader's decode has the truth."""
    at = body.rfind(_META_KEY, max(0, len(body) - 64 * 1024))
    end = body.rfind(b"}")
    if at < 0 or end < at:
        return ""
    try:
        meta = _LIST_META.decode(memoryview(body)[at + len(_META_KEY) : end])
    except msgspec.DecodeError:
        return ""
    return meta.continue_ or ""


def _encoding(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Encoding", "").strip().lower()


async def _inflate(data: bytes | bytearray, cap: int, hold: Hold, deadline: float) -> bytes:
    """A gzip body, inflated to at most ``cap`` bytes. The gzip trailer says how big the
    body is (``ISIZE``): past the cap it is refused without inflating, and the room is
    taken from the budget before inflating; a body that inflates past what its trailer
    says (a bomb that lies) is refused at that size."""
    if data[:2] != b"\x1f\x8b":  # ISA-L would wait for a header; say what is wrong
        raise UpstreamError("invalid", "body labelled gzip is not gzip")
    claimed = int.from_bytes(data[-4:], "little") if len(data) >= 18 else 0
    inflater = isal_zlib.decompressobj(wbits=31)
    if claimed > cap:
        # Its trailer says it is too big. Inflate a little, to tell a real one (refused
        # without inflating the rest) from a cut or broken body whose last bytes are no
        # trailer.
        try:
            head = inflater.decompress(data, PEEK_BYTES)
        except isal_zlib.error as e:
            raise UpstreamError("invalid", f"gzip body does not inflate: {e}") from None
        if not inflater.eof:
            if not inflater.unconsumed_tail and len(head) < PEEK_BYTES:
                raise UpstreamError("invalid", "the gzip body ends early")
            raise UpstreamError(
                "body_too_large",
                f"body of {claimed} bytes once inflated exceeds the {cap}-byte cap",
            )
        claimed = len(head)  # a small body behind a trailer that lies: read it again
        inflater = isal_zlib.decompressobj(wbits=31)
    room = claimed
    await hold.grow(room, deadline)
    try:
        body = inflater.decompress(data, room + 1)
    except isal_zlib.error as e:
        raise UpstreamError("invalid", f"gzip body does not inflate: {e}") from None
    if len(body) > room or inflater.unconsumed_tail:
        del body  # not kept alive by the traceback while the error travels
        raise UpstreamError("invalid", "gzip body inflates past the size its trailer gives")
    hold.shrink(room - len(body))
    if not inflater.eof:
        raise UpstreamError("invalid", "the gzip body ends early")
    if inflater.unused_data:
        raise UpstreamError("invalid", "data after the end of the gzip body")
    return body


async def _read_capped(
    resp: aiohttp.ClientResponse, cap: int, hold: Hold, deadline: float
) -> bytearray:
    """Read the body as sent, refusing more than ``cap`` bytes, each chunk's bytes taken
    from the budget before it is kept. Leaving the ``async with`` on the exception closes
    the connection instead of reusing it dirty."""
    if resp.content_length is not None and resp.content_length > cap:
        raise UpstreamError("body_too_large", f"body of {resp.content_length} bytes exceeds {cap}")
    body = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            try:
                await hold.grow(len(chunk), deadline)
            except TimeoutError:  # the budget's wait, not the network's: say which
                raise UpstreamError("memory", NO_ROOM) from None
            body += chunk
            if len(body) > cap:
                raise UpstreamError("body_too_large", f"body exceeds the {cap}-byte cap")
    except BaseException:
        # This frame travels with the error (a cancellation's stays in its task until the
        # task goes): it keeps nothing big.
        body.clear()
        raise
    return body


async def _status_message(resp: aiohttp.ClientResponse) -> str:
    """The ``message`` of a Kubernetes Status body, short and redacted, if there is one."""
    try:
        raw = await asyncio.wait_for(resp.content.read(4096), 1.0)
        if _encoding(resp) in GZIP:
            raw = isal_zlib.decompressobj(wbits=31).decompress(raw, 4096)
        text = raw.decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError, isal_zlib.error):
        return ""
    try:
        message = json.loads(text).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    message = " ".join(str(message).split())[:200]
    return f": {redact(message)}" if message else ""


def retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date; a
    date in the past is 0), or None when there is none or it cannot be read."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _location_host(resp: aiohttp.ClientResponse) -> str:
    """Where a redirect points: the host and port only (the rest may carry tokens)."""
    location = resp.headers.get("Location")
    if not location:
        return "nowhere (no Location)"
    try:
        target = urlsplit(urljoin(str(resp.url), location))
        host, port = target.hostname, target.port
    except ValueError:
        host = port = None
    if not host:
        return "an invalid Location"
    return redact(f"{host}:{port}" if port else host)


def _reason(e: BaseException) -> str:
    """An exception's text without secrets, on one line."""
    text = str(e) or type(e).__name__
    if isinstance(e, aiohttp.ClientConnectorError) and e.os_error is not None:
        os_error = e.os_error
        reason = (
            "connection refused"
            if isinstance(os_error, ConnectionRefusedError)
            else os_error.strerror or str(os_error)
        )
        text = f"{e.host}:{e.port}: {reason}"
    return redact(" ".join(text.split()))[:300]
