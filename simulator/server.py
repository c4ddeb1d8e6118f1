"""A fake Kubernetes API server that serves a whole simulated fleet from one port.

Each cluster lives under its own path prefix, as behind Rancher's proxy:
`https://127.0.0.1:PORT/clusters/<name>` is the kubeconfig `server:`, and the exporter appends
`/apis/longhorn.io/v1beta2/namespaces/<ns>/<plural>`. Lists are paged with `limit`/`continue`
like kube-apiserver, answered from pre-encoded cached pages (store.py), so one process can
stand in for 51 clusters, or 500 small ones, without becoming the bottleneck.

Tests and people steer it at runtime through the Python API of `SimulatedFleet` or the JSON
control endpoints under `/_sim/` on the same port (control.py): faults per resource, latency,
token rotation, spec changes, and request counts per (cluster, resource).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from . import control, faults
from .faults import JSON, FaultSettings, api_headers, status_response
from .fleet import ALL_RESOURCES, HTTP_FAULTS, ClusterSpec, normalize_fault
from .kubeconfig import kubeconfig, write_private
from .objects import KINDS, build_cluster
from .store import ClusterStore, ContinueError, Page, decode_continue
from .tls import CertificateAuthority, KeyPair, client_context, server_context

# Request kinds counted besides the Longhorn plurals; anything else counts as "other".
EXTRA_RESOURCES = ("version", "discovery")
_GROUP = ("apis", "longhorn.io", "v1beta2")
_VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.4+k3s1",
    "gitCommit": "a562d7b7a2b3b5bbd2a0b2d4fd3b3a4cbe2bd5a8",
    "gitTreeState": "clean",
    "buildDate": "2024-12-12T01:09:31Z",
    "goVersion": "go1.22.9",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass
class ClusterState:
    """Runtime state of one simulated cluster."""

    spec: ClusterSpec
    token: str = field(repr=False)
    client: KeyPair | None = field(default=None, repr=False)
    store: ClusterStore | None = None
    previous: ClusterStore | None = None  # still answers continue tokens after a change
    faults: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0
    # Bytes of list JSON served per second and request (0: at once). With ``latency`` it
    # models an API server that is neither on loopback nor free: see set_latency.
    bytes_per_second: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    lists: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def client_cn(self) -> str:
        return client_cn(self.spec.name)

    def fault_for(self, resource: str) -> str | None:
        return self.faults.get(resource) or self.faults.get(ALL_RESOURCES)


def _route(tail: str) -> tuple[str, str | None]:
    """(resource, namespace) for a path below /clusters/<name>/. The namespace is "" for a
    list across all namespaces and None for requests that are not lists."""
    parts = tail.strip("/").split("/")
    if parts == ["version"]:
        return "version", None
    if tuple(parts[:3]) == _GROUP:
        rest = parts[3:]
        if not rest:
            return "discovery", None
        plural = rest[-1] if len(rest) in (1, 3) else ""
        if plural in KINDS and (len(rest) == 1 or rest[0] == "namespaces"):
            return plural, rest[1] if len(rest) == 3 else ""
    return "other", None


def _fault_key(resource: str | None) -> str:
    """The fault-table key for `resource`, or ValueError for a resource we do not serve."""
    if resource is None or resource == ALL_RESOURCES:
        return ALL_RESOURCES
    if resource not in KINDS and resource not in EXTRA_RESOURCES:
        raise ValueError(f"unknown resource {resource!r} for a fault")
    return resource


def client_cn(cluster: str) -> str:
    """The subject CN of the client certificate that may read `cluster`."""
    return f"fleet-exporter@{cluster}"


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _limit(request: web.Request) -> int | None:
    """The `limit` query parameter (0 = no limit), or None when it is not an integer."""
    try:
        return int(request.query.get("limit") or 0)
    except ValueError:
        return None


def _bad_request(message: str) -> web.Response:
    return status_response(400, message)


class SimulatedFleet:
    """Serve `specs` as separate Kubernetes API servers behind one TLS port.

    Use as `async with SimulatedFleet(specs) as fleet:` or call `start()`/`stop()`. Objects
    are built at `start()` with timestamps relative to `now` (default: the current time).
    `gzip=False` turns off kube-apiserver-style gzip of big responses.
    """

    def __init__(
        self,
        specs: Iterable[ClusterSpec],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        now: float | None = None,
        gzip: bool = True,
        fault_settings: FaultSettings | None = None,
    ) -> None:
        specs = list(specs)
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate cluster names: {', '.join(duplicates)}")
        self.host = host
        self.port = 0
        self._wanted_port = port
        self.now = now
        self.gzip = gzip
        self.fault_settings = fault_settings or FaultSettings()
        self._ca = CertificateAuthority()
        self.ca_pem: str = self._ca.cert_pem
        self.clusters: dict[str, ClusterState] = {}
        for spec in specs:
            cert = spec.auth == "cert"
            self.clusters[spec.name] = ClusterState(
                spec=spec,
                token=_new_token(),
                client=self._ca.issue_client(client_cn(spec.name)) if cert else None,
                faults={_fault_key(k): v for k, v in spec.faults.items()},
                latency=spec.latency_seconds,
            )
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._closed: socket.socket | None = None
        self._kubeconfig_dir: Path | None = None
        self._bombs: dict[tuple[str, int], bytes] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build every reachable cluster's objects, then listen."""
        if self._runner is not None:
            raise RuntimeError("SimulatedFleet is already started")
        self._stopping = asyncio.Event()
        for state in self.clusters.values():
            if not state.spec.unreachable:
                objects = build_cluster(state.spec, self.now)
                state.store = ClusterStore(objects, metadata_first=state.spec.metadata_first)
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_routes(control.routes(self))
        app.router.add_route("*", "/clusters/{cluster}/{tail:.*}", self._handle)
        # handler_cancellation: a client that hangs up ends its hanging/dripping handler.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        ctx = server_context(self._ca, self._ca.issue_server())
        site = web.TCPSite(runner, self.host, self._wanted_port, ssl_context=ctx)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        # A bound socket that never listens: connecting to it is refused, and no other
        # process can take the port while we hold it.
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind((self.host, 0))

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._closed is not None:
            self._closed.close()
            self._closed = None

    # -- Python API ----------------------------------------------------------------------

    def cluster(self, name: str) -> ClusterState:
        try:
            return self.clusters[name]
        except KeyError:
            raise KeyError(f"no simulated cluster named {name!r}") from None

    def names(self) -> list[str]:
        """Cluster names, in the order of the specs."""
        return list(self.clusters)

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def url_for(self, name: str) -> str:
        """The cluster's API server URL (kubeconfig `server:`); a closed port when the
        cluster is unreachable."""
        state = self.cluster(name)
        if not self.port:
            raise RuntimeError("SimulatedFleet is not started")
        port = self.port
        if state.spec.unreachable and self._closed is not None:
            port = self._closed.getsockname()[1]
        return f"https://{self.host}:{port}/clusters/{name}"

    def token_for(self, name: str) -> str:
        return self.cluster(name).token

    def client_cert_for(self, name: str) -> KeyPair | None:
        """The client certificate of a cluster in "cert" auth mode, else None."""
        return self.cluster(name).client

    def client_ssl_context(self, name: str | None = None) -> ssl.SSLContext:
        """A client context trusting the simulator's CA, presenting the cluster's client
        certificate when `name` is a "cert" cluster."""
        return client_context(self.ca_pem, self.cluster(name).client if name else None)

    def set_fault(self, name: str, fault: str | int, resource: str | None = None) -> None:
        """Make `resource` (a plural, "version", "discovery"; None = all) misbehave."""
        self.cluster(name).faults[_fault_key(resource)] = normalize_fault(fault)

    def clear_faults(self, name: str) -> None:
        self.cluster(name).faults.clear()

    def set_latency(self, name: str, seconds: float, bytes_per_second: float = 0.0) -> None:
        """Delay every request of cluster ``name`` by ``seconds`` (a round trip plus the
        server's fixed cost), and a list page also by its JSON size / ``bytes_per_second``
        (the server encoding it; 0 = no such cost). Requests are delayed independently, as
        a multi-core kube-apiserver serves concurrent lists."""
        if not 0 <= seconds < 3600:
            raise ValueError(f"latency must be in [0, 3600) seconds, got {seconds}")
        if not (bytes_per_second == 0 or 1e3 <= bytes_per_second <= 1e12):
            raise ValueError(
                f"bytes_per_second must be 0 or in [1e3, 1e12], got {bytes_per_second}"
            )
        state = self.cluster(name)
        state.latency = float(seconds)
        state.bytes_per_second = float(bytes_per_second)

    def requests(self, name: str, resource: str | None = None) -> int:
        """Requests that reached cluster `name` (every page counts), for one resource or
        all; counted before authentication, so rejected requests count too."""
        counts = self.cluster(name).requests
        return sum(counts.values()) if resource is None else counts[resource]

    def lists(self, name: str, resource: str | None = None) -> int:
        """Requests without a continue token, i.e. list rounds started."""
        counts = self.cluster(name).lists
        return sum(counts.values()) if resource is None else counts[resource]

    def max_in_flight(self, name: str) -> int:
        """The most requests to cluster `name` that were in progress at once."""
        return self.cluster(name).max_in_flight

    def reset_counts(self, name: str | None = None) -> None:
        for state in [self.cluster(name)] if name else self.clusters.values():
            state.requests.clear()
            state.lists.clear()
            state.max_in_flight = state.in_flight

    def summary(self, name: str) -> dict[str, Any]:
        """Exact health counts of the objects served (empty for an unreachable cluster)."""
        store = self.cluster(name).store
        return dict(store.summary) if store else {}

    def malformed(self, name: str) -> list[tuple[str, str]]:
        """(plural, name) of the deliberately broken objects the cluster serves."""
        store = self.cluster(name).store
        return list(store.malformed) if store else []

    def rotate_token(self, name: str) -> None:
        """Give cluster `name` a new token; the old one gets 401 from now on. Rewrites the
        cluster's kubeconfig if `write_kubeconfigs` was called."""
        state = self.cluster(name)
        state.token = _new_token()
        if self._kubeconfig_dir is not None:
            self._write_kubeconfig(self._kubeconfig_dir, state)

    async def update_cluster(self, name: str, **changes: Any) -> None:
        """Change cluster `name`'s spec (health knobs, sizes, version, ...) and rebuild its
        objects off the event loop, with a new resourceVersion. Continue tokens of the
        previous generation stay valid; older ones get 410 Expired."""
        state = self.cluster(name)
        fixed = {"name", "auth", "unreachable"} & set(changes)
        if fixed:
            raise ValueError(f"cannot change {', '.join(sorted(fixed))} of a running cluster")
        spec = dataclasses.replace(state.spec, **changes)
        new_faults = {_fault_key(k): v for k, v in spec.faults.items()}
        objects = await asyncio.to_thread(build_cluster, spec, self.now)
        old = state.store
        newer = max(objects.resource_version, old.resource_version + 1 if old else 0)
        store = await asyncio.to_thread(ClusterStore, objects, newer, spec.metadata_first)
        state.spec, state.previous, state.store = spec, old, store
        if "latency_seconds" in changes:
            state.latency = spec.latency_seconds
        if "faults" in changes:
            state.faults = new_faults

    def write_kubeconfigs(self, directory: str | Path) -> dict[str, Path]:
        """Write `<cluster>.yaml` per cluster (mode 0600) into `directory` and remember it
        for `rotate_token`. Token clusters get an inline token, "cert" clusters an inline
        client certificate and key; all trust the simulator's CA inline."""
        if not self.port:
            raise RuntimeError("start the SimulatedFleet before writing kubeconfigs")
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._kubeconfig_dir = path
        return {name: self._write_kubeconfig(path, s) for name, s in self.clusters.items()}

    def _write_kubeconfig(self, directory: Path, state: ClusterState) -> Path:
        name = state.spec.name
        config = kubeconfig(
            name,
            self.url_for(name),
            self.ca_pem,
            token=None if state.client else state.token,
            client=state.client,
            tls_server_name=state.spec.tls_server_name,
            namespace=state.spec.namespace,
        )
        target = directory / f"{name}.yaml"
        write_private(target, config)
        return target

    # -- the fake API server -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        state = self.clusters.get(request.match_info["cluster"])
        if state is None or state.store is None:
            return faults.not_found()
        resource, namespace = _route(request.match_info["tail"])
        is_continue = bool(request.query.get("continue"))
        state.requests[resource] += 1
        if not is_continue:
            state.lists[resource] += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.latency > 0:
                await asyncio.sleep(state.latency)
            if not self._authenticated(request, state):
                return faults.http_fault(401, resource, namespace or "")
            if request.method != "GET":
                return status_response(
                    405, f"the server does not allow this method ({request.method})"
                )
            fault = state.fault_for(resource)
            if fault == "expired_continue" and not is_continue:
                fault = None  # only continue requests expire
            if fault is not None and fault != "endless_continue":
                return await self._misbehave(request, state, fault, resource, namespace)
            return await self._serve(
                request, state, resource, namespace, fault == "endless_continue"
            )
        finally:
            state.in_flight -= 1

    def _authenticated(self, request: web.Request, state: ClusterState) -> bool:
        """A matching bearer token, or a client certificate (verified against our CA by the
        TLS layer) issued for this very cluster."""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            offered = header[7:].strip().encode("utf-8", "surrogateescape")
            if hmac.compare_digest(offered, state.token.encode()):
                return True
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if cert:
            subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
            return subject.get("commonName") == state.client_cn
        return False

    def _accepts_gzip(self, request: web.Request) -> bool:
        return self.gzip and "gzip" in request.headers.get("Accept-Encoding", "").lower()

    async def _serve(
        self,
        request: web.Request,
        state: ClusterState,
        resource: str,
        namespace: str | None,
        endless: bool,
    ) -> web.Response:
        if resource == "version":
            return web.json_response(_VERSION_INFO, headers=api_headers())
        if resource == "discovery":
            return web.json_response(_discovery(), headers=api_headers())
        if namespace is None or state.store is None:
            return faults.not_found()
        store = state.store
        limit = _limit(request)
        if limit is None:
            return _bad_request(f"invalid limit {request.query.get('limit')!r}")
        start = 0
        token = request.query.get("continue", "")
        if token:
            try:
                rv, start = decode_continue(token)
            except ContinueError as exc:
                return _bad_request(str(exc))
            if state.previous is not None and rv == state.previous.resource_version:
                store = state.previous
            elif rv != store.resource_version:
                return faults.expired()
        if namespace not in ("", state.spec.namespace):
            return web.Response(
                body=store.empty_list(resource), content_type=JSON, headers=api_headers()
            )
        gz = self._accepts_gzip(request)
        if endless:
            page = store.endless_page(resource, start, limit, gz)
        else:
            page = store.page(resource, start, limit, gz)
        if state.bytes_per_second > 0:
            await asyncio.sleep(page.json_bytes / state.bytes_per_second)
        return _page_response(page)

    async def _misbehave(
        self,
        request: web.Request,
        state: ClusterState,
        fault: str,
        resource: str,
        namespace: str | None,
    ) -> web.StreamResponse:
        settings = self.fault_settings
        if fault in HTTP_FAULTS:
            return faults.http_fault(int(fault), resource, namespace or "")
        if fault == "timeout":
            return await faults.hang(self._stopping, settings)
        if fault == "expired_continue":
            return faults.expired()
        if fault == "throttle":
            return faults.throttle(settings)
        if fault == "redirect":
            return faults.redirect(request, settings)
        if fault == "wrong_content_type":
            return faults.wrong_content_type()
        kind = KINDS.get(resource, "Volume")
        if fault == "invalid_json":
            return faults.invalid_json(kind)
        body, item = self._sample(state, resource, request)
        if fault == "truncated":
            return faults.truncated(body)
        if fault == "truncated_gzip":
            return faults.truncated_gzip(body)
        if fault == "unknown_encoding":
            return faults.unknown_encoding(body)
        if fault == "slow_drip":
            return await faults.slow_drip(request, body, settings)
        if fault == "reset":
            return await faults.reset(request, body)
        if fault == "oversized":
            return await faults.oversized(request, item, kind, settings)
        # gzip_bomb: built once per (kind, size), off the loop (zlib releases the GIL).
        key = (kind, settings.oversized_bytes)
        if key not in self._bombs:
            self._bombs[key] = await asyncio.to_thread(
                faults.make_bomb, item, kind, settings.oversized_bytes
            )
        return faults.gzip_bomb(self._bombs[key])

    def _sample(
        self, state: ClusterState, resource: str, request: web.Request
    ) -> tuple[bytes, bytes]:
        """The body this request would have had, and one item, for faults that mangle them."""
        if state.store is None or resource not in KINDS:
            body = json.dumps(_VERSION_INFO).encode()
            return body, body
        body = state.store.page(resource, 0, _limit(request) or 0).body
        items = state.store.items[resource]
        return body, items[0] if items else b'{"metadata":{"name":"x"}}'


def _page_response(page: Page) -> web.Response:
    headers = api_headers()
    if page.gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=page.body, content_type=JSON, headers=headers)


def _discovery() -> dict[str, Any]:
    """The APIResourceList kube-apiserver serves for longhorn.io/v1beta2."""
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "longhorn.io/v1beta2",
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": [
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "create",
                    "update",
                    "watch",
                ],
            }
            for plural, kind in KINDS.items()
        ],
    }
