"""``fleet-exporter bench``: hold the exporter to the physical limit, the upstream itself.

Three processes, so none shares another's event loop, GIL or memory: the simulated fleet
(``python -m fleet_exporter.bench sim``), the real exporter app with a few measuring routes
under ``/_bench/`` (``... bench exporter``), and a bare aiohttp server that returns fixed
bytes (``... bench bare``). This process drives them over loopback and measures:

1. cold probe overhead: cold probe latency / the *floor*, a bare aiohttp client doing the
   same concurrent paginated GETs (same page size, TLS, session settings; no parsing),
   per cluster size, with the exporter's CPU seconds per refresh;
2. warm probe p50/p99 against the bare handler returning the same bytes;
3. a fleet sweep: every cluster probed at once by two scrapers (an HA pair), time to the
   last answer against the slowest cluster's floor, while a 1 ms ticker task in the
   exporter's loop records the longest event-loop stall;
4. RSS: empty, while filling (linear fit per 1,000 volumes), peak and steady; then a fresh
   exporter over 500 small clusters, scraped by the HA pair spread over one interval.

Children read their stdin and exit when it closes, so nothing outlives the run, even when
this process is killed. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import resource
import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

# Prometheus 3's Accept header, gzip, and a 10 s scrape timeout: what a real scrape sends.
PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,"
    "*/*;q=0.1"
)
SCRAPE_TIMEOUT = 10.0
SCRAPE_HEADERS = {
    "Accept": PROM_ACCEPT,
    "Accept-Encoding": "gzip",
    "X-Prometheus-Scrape-Timeout-Seconds": f"{SCRAPE_TIMEOUT:g}",
}
TARGETS = {
    "cold_ratio_2000": 1.3,
    "cold_ratio_100": 1.1,
    "warm_p99_ratio": 2.0,
    "sweep_ratio": 1.5,
    "stall_ms": 50.0,
    "steady_rss_mb": 200.0,
}
# On loopback the simulator answers at once, so the "floor" is the client's own CPU, not
# an API server. A real one costs a round trip per page plus the time to encode the page:
# kube-apiserver streamed JSON+gzip lists at ~84 MB/s (1M 16 KB pods, HTTP/1.1:
# kubernetes/kubernetes#141378). The cold and sweep figures are measured again over
# the simulator slowed down that way, for an exporter in the clusters' data centre (1 ms
# round trip) and one region away (25 ms: e.g. eu-west-1 to eu-central-1).
UPSTREAMS = (("same data centre", 0.001, 84e6), ("nearby region", 0.025, 84e6))
CHILD_START_TIMEOUT = 180.0  # the 500-cluster simulator builds its objects before READY


class BenchError(RuntimeError):
    """The benchmark could not run (a child did not start, a request failed)."""


@dataclass
class Options:
    clusters: int = 51
    max_volumes: int = 2000
    small_clusters: int = 500
    reps: int = 3  # measured repetitions per cold size (after one warm-up)
    warm_requests: int = 1000  # per target and cluster, sequential
    sweeps: int = 3
    interval: float = 30.0  # the 500-cluster phase spreads each scraper over this
    out_dir: Path = Path("bench/results")
    plot: bool = False
    time_limit: float = 900.0
    # Modelled API servers, (name, round trip s, list JSON bytes/s), for the cold and sweep
    # figures again: see UPSTREAMS.
    upstreams: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.upstreams:
            self.upstreams = UPSTREAMS

    @classmethod
    def quick(cls, out_dir: Path) -> Options:
        """A smoke run: three tiny clusters and ten small ones, a few seconds."""
        return cls(
            clusters=3,
            max_volumes=30,
            small_clusters=10,
            reps=1,
            warm_requests=20,
            sweeps=1,
            interval=1.0,
            out_dir=out_dir,
            plot=True,
            time_limit=120.0,
            upstreams=(("modelled", 0.002, 84e6),),
        )


# ============================================================================ children


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM/SIGINT or when stdin closes (the driver exited or died)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, readable)
    return stop


def _fleet_specs(kind: str, n: int, max_volumes: int) -> list[Any]:
    from .simulator.fleet import sized_fleet, small_fleet

    return sized_fleet(n, max_volumes) if kind == "sized" else small_fleet(n)


async def _sim_child(args: argparse.Namespace) -> None:
    from .simulator.server import SimulatedFleet

    stop = _stop_event()
    specs = _fleet_specs(args.fleet, args.clusters, args.max_volumes)
    async with SimulatedFleet(specs, host="127.0.0.1") as sim:
        sim.write_kubeconfigs(args.dir)
        print(f"READY {sim.port}", flush=True)
        await stop.wait()


def _proc_status() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process, in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


class _Ticker:
    """A task that wakes every millisecond; the longest gap between wake-ups, less the
    millisecond asked for, is how long the loop could not run anything else. It also
    times the garbage collector's pauses, the usual suspect for a long stall."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.max_stall = 0.0
        self.ticks = 0
        self.max_gc = 0.0
        self.gc_full = 0
        self.gaps: list[float] = []
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        self.max_gc = max(self.max_gc, time.perf_counter() - self._gc_start)
        self.gc_full += info["generation"] == 2

    def start(self) -> None:
        self.stop()
        self.max_stall, self.ticks, self.max_gc, self.gc_full = 0.0, 0, 0.0, 0
        self.gaps = []
        self.task = asyncio.create_task(self._run())

    def p99(self) -> float:
        return _pct(self.gaps, 99) if self.gaps else 0.0

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gap = now - last - 0.001
            self.gaps.append(gap)
            self.max_stall = max(self.max_stall, gap)
            self.ticks += 1
            last = now


_FREEZER = web.AppKey("bench_freezer", asyncio.Task)


async def _exporter_child(args: argparse.Namespace) -> None:
    from .app import create_app
    from .fleet import Fleet
    from .probe import settle_heap

    stop = _stop_event()
    fleet = Fleet(Path(args.dir))
    app = create_app(fleet)
    ticker = _Ticker()

    async def stats(request: web.Request) -> web.Response:
        cached = sum(1 for n in fleet.clusters if fleet.cache.latest(n) is not None)
        return web.json_response(
            {
                **_proc_status(),
                "cpu": time.process_time(),
                "max_stall": ticker.max_stall,
                "p99_stall": ticker.p99(),
                "ticks": ticker.ticks,
                "max_gc": ticker.max_gc,
                "gc_full": ticker.gc_full,
                "cached": cached,
                "refreshing": sum(1 for n in fleet.clusters if fleet.cache.refreshing(n)),
                "threads": threading.active_count(),
            }
        )

    async def forget(request: web.Request) -> web.Response:
        names = request.query.getall("cluster", []) or list(fleet.clusters)
        for name in names:
            fleet.cache.forget(name)
        return web.Response(text="ok")

    async def tick(request: web.Request) -> web.Response:
        if request.query.get("on") == "1":
            ticker.start()
        else:
            ticker.stop()
        return web.Response(text="ok")

    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/forget", forget)
    app.router.add_post("/_bench/ticker", tick)

    async def freeze_startup_heap(app: web.Application) -> None:
        # As `serve` does once the kubeconfigs are loaded (probe.settle_heap).
        async def settle() -> None:
            await fleet.wait_ready()
            settle_heap()

        app[_FREEZER] = asyncio.create_task(settle())

    app.on_startup.append(freeze_startup_heap)
    try:
        await _serve_until(app, stop)
    finally:
        ticker.stop()


async def _serve_until(app: web.Application, stop: asyncio.Event) -> None:
    """Listen on a free loopback port, announce it as ``READY <port>``, serve until
    ``stop``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _bare_child(args: argparse.Namespace) -> None:
    """Returns whatever bytes and headers were last POSTed to ``/_set``, as one plain
    ``web.Response``: the least any aiohttp handler can do for the same answer."""
    stop = _stop_event()
    current: dict[str, Any] = {"body": b"", "headers": {}}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=current["body"], headers=current["headers"])

    async def set_body(request: web.Request) -> web.Response:
        current["headers"] = {
            k[len("X-Set-") :]: v for k, v in request.headers.items() if k.startswith("X-Set-")
        }
        current["body"] = await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/bare", handle)
    app.router.add_post("/_set", set_body)
    await _serve_until(app, stop)


def child_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fleet_exporter.bench")
    p.add_argument("role", choices=["sim", "exporter", "bare"])
    p.add_argument("--dir", default="")
    p.add_argument("--fleet", choices=["sized", "small"], default="sized")
    p.add_argument("--clusters", type=int, default=51)
    p.add_argument("--max-volumes", type=int, default=2000)
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main = {"sim": _sim_child, "exporter": _exporter_child, "bare": _bare_child}[args.role]
    asyncio.run(main(args))
    return 0


# ============================================================================ driver side


@dataclass
class _Child:
    role: str
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @classmethod
    async def start(cls, role: str, log_dir: Path, *args: str) -> _Child:
        log = log_dir / f"{role}.log"
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleet_exporter.bench",
                role,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        finally:
            os.close(err)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), CHILD_START_TIMEOUT)
        except TimeoutError:
            line = b""
        text = line.decode(errors="replace").strip()
        if not text.startswith("READY "):
            await cls(role, proc, 0, log).stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"the {role} process did not start (got {text!r}):\n{tail}")
        return cls(role, proc, int(text.split()[1]), log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class _Upstream:
    """One simulated cluster, as the floor client reaches it."""

    name: str
    volumes: int
    base: str
    ssl: Any
    server_hostname: str | None
    headers: dict[str, str]


@dataclass
class _Answer:
    status: int
    seconds: float
    end: float  # perf_counter when the last byte arrived
    size: int
    success: bool


def _continue_token(body: bytes) -> str:
    """The list's ``metadata.continue``, found without parsing: kube-apiserver (and the
    simulator) write ``metadata`` last, so the token sits in the body's tail."""
    meta = body.rfind(b'"metadata":')
    start = body.find(b'"continue":"', meta)
    if meta < 0 or start < 0:
        return ""
    start += len(b'"continue":"')
    return body[start : body.index(b'"', start)].decode()


def _probe_success(body: bytes, gzipped: bool) -> bool:
    if gzipped:
        body = _gunzip(body)
    for line in body.split(b"\n"):
        if line.startswith(b"probe_success{"):
            return line.rsplit(b" ", 1)[-1] in (b"1", b"1.0")
    return False


def _gunzip(data: bytes) -> bytes:
    """Every member of a multi-member gzip stream, as Prometheus' Go reader decodes it."""
    out = []
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.append(d.decompress(data))
        data = d.unused_data
    return b"".join(out)


def _pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _fit(points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Least-squares line y = a + b x, with R²."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(points) < 2 or len(set(xs)) < 2:
        return {"intercept": ys[0] if ys else 0.0, "slope": 0.0, "r2": 0.0}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return {"intercept": intercept, "slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


class _Driver:
    """One phase's processes and clients: a simulator, an exporter in front of it, two
    scraper sessions and the floor client."""

    def __init__(self, opts: Options, work: Path, fleet: str, n: int) -> None:
        self.opts = opts
        self.work = work
        self.fleet = fleet
        self.n = n
        self.dir = work / f"clusters-{fleet}"
        self.specs = {s.name: s for s in _fleet_specs(fleet, n, opts.max_volumes)}
        self.sim: _Child | None = None
        self.exporter: _Child | None = None
        self.scrapers: list[aiohttp.ClientSession] = []
        self.control: aiohttp.ClientSession | None = None
        self.floor_session: aiohttp.ClientSession | None = None
        self.upstreams: dict[str, _Upstream] = {}

    async def __aenter__(self) -> _Driver:
        from .kube import new_session

        self.sim = await _Child.start(
            "sim",
            self.work,
            "--dir",
            str(self.dir),
            "--fleet",
            self.fleet,
            "--clusters",
            str(self.n),
            "--max-volumes",
            str(self.opts.max_volumes),
        )
        # Long TTL: the benchmark decides when data goes cold (/_bench/forget), so a warm
        # measurement never straddles a refresh.
        (self.dir / "fleet.yaml").write_text("defaults:\n  cache_ttl: 1h\n  max_staleness: 2h\n")
        self.exporter = await _Child.start("exporter", self.work, "--dir", str(self.dir))
        self.scrapers = [self._client() for _ in range(2)]
        self.control = self._client()
        # The floor uses the exporter's own session settings (connector, keep-alive).
        self.floor_session = new_session()
        await self._load_upstreams()
        await self._wait_ready()
        return self

    async def _wait_ready(self) -> None:
        """Until the exporter has tried every kubeconfig (it serves before that)."""
        assert self.control is not None and self.exporter is not None
        for _ in range(600):
            async with self.control.get(self.exporter.url + "/-/ready") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.1)
        raise BenchError("the exporter did not get ready within 60 s")

    async def __aexit__(self, *exc: object) -> None:
        for s in [*self.scrapers, self.control, self.floor_session]:
            if s is not None:
                await s.close()
        for child in (self.exporter, self.sim):
            if child is not None:
                await child.stop()

    @staticmethod
    def _client() -> aiohttp.ClientSession:
        # Prometheus keeps a connection per target; no decompression on our side, so the
        # timing is the server's answer, not our gunzip.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=300),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def _load_upstreams(self) -> None:
        from .credentials import load_credentials
        from .kube import LONGHORN_API

        for name, spec in self.specs.items():
            creds = await load_credentials(self.dir / f"{name}.yaml")
            ep = creds.endpoint
            auth = await creds.authorization()
            self.upstreams[name] = _Upstream(
                name,
                spec.volumes,
                f"{ep.server.rstrip('/')}{LONGHORN_API}/namespaces/{spec.namespace}/",
                ep.ssl,
                ep.server_hostname,
                {"Authorization": auth} if auth else {},
            )

    async def set_upstream(self, rtt: float, bytes_per_second: float) -> None:
        """Slow every simulated cluster down to a modelled API server (0, 0: loopback)."""
        assert self.control is not None and self.sim is not None
        body = {"seconds": rtt, "bytes_per_second": bytes_per_second}
        for name in self.specs:
            url = f"https://127.0.0.1:{self.sim.port}/_sim/clusters/{name}/latency"
            async with self.control.put(url, json=body, ssl=False) as r:
                r.raise_for_status()

    # -- the exporter's measuring routes

    async def stats(self) -> dict[str, float]:
        assert self.control is not None and self.exporter is not None
        async with self.control.get(self.exporter.url + "/_bench/stats") as r:
            return await r.json()

    async def forget(self, name: str | None = None) -> None:
        assert self.control is not None and self.exporter is not None
        params = {"cluster": name} if name else {}
        async with self.control.post(self.exporter.url + "/_bench/forget", params=params) as r:
            r.raise_for_status()

    async def ticker(self, on: bool) -> None:
        assert self.control is not None and self.exporter is not None
        url = self.exporter.url + "/_bench/ticker"
        async with self.control.post(url, params={"on": "1" if on else "0"}) as r:
            r.raise_for_status()

    # -- measurements

    async def floor(self, names: Sequence[str]) -> float:
        """Seconds for a bare client to list every resource of ``names`` (all clusters
        at once; each cluster's lists concurrently, each paginated), bodies read, no
        parsing beyond finding the continue token."""
        from .config import Settings
        from .longhorn import RESOURCES

        settings = Settings()
        assert self.floor_session is not None
        session = self.floor_session

        async def one_list(up: _Upstream, resource: str, limit: asyncio.Semaphore) -> None:
            token = ""
            async with limit:
                while True:
                    params = {"limit": str(settings.page_size)}
                    if token:
                        params["continue"] = token
                    async with session.get(
                        up.base + resource,
                        params=params,
                        headers=up.headers,
                        ssl=up.ssl,
                        server_hostname=up.server_hostname,
                        # aiohttp's default: inflated inline, as the body arrives.
                        auto_decompress=True,
                    ) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            raise BenchError(f"floor: {up.name} {resource}: HTTP {resp.status}")
                    token = _continue_token(body)
                    if not token:
                        return

        async def one_cluster(up: _Upstream) -> None:
            limit = asyncio.Semaphore(settings.concurrency)
            await asyncio.gather(*(one_list(up, r, limit) for r in RESOURCES))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_cluster(self.upstreams[n]) for n in names))
        return time.perf_counter() - t0

    async def probe(self, url: str, scraper: int = 0) -> _Answer:
        session = self.scrapers[scraper]
        t0 = time.perf_counter()
        async with session.get(url, headers=SCRAPE_HEADERS) as resp:
            body = await resp.read()
            gz = resp.headers.get("Content-Encoding") == "gzip"
        end = time.perf_counter()
        ok = resp.status == 200 and _probe_success(body, gz)
        return _Answer(resp.status, end - t0, end, len(body), ok)

    def probe_url(self, name: str) -> str:
        assert self.exporter is not None
        return f"{self.exporter.url}/probe?cluster={name}"

    async def probe_all(
        self, names: Sequence[str], scrapers: int = 1, limit: int = 0
    ) -> list[_Answer]:
        sem = asyncio.Semaphore(limit) if limit else None

        async def one(name: str, k: int) -> _Answer:
            if sem is None:
                return await self.probe(self.probe_url(name), k)
            async with sem:
                return await self.probe(self.probe_url(name), k)

        return await asyncio.gather(*(one(n, k) for k in range(scrapers) for n in names))


# ============================================================================ phases


def _by_size(specs: dict[str, Any]) -> list[str]:
    return sorted(specs, key=lambda n: (specs[n].volumes, n))


def _pick_sizes(d: _Driver) -> list[str]:
    """About eight clusters spanning the sizes, always the biggest and the one nearest
    100 volumes (the two with targets)."""
    ordered = _by_size(d.specs)
    n = len(ordered)
    picks = {ordered[-1], min(ordered, key=lambda x: abs(d.specs[x].volumes - 100))}
    for i in range(8):
        picks.add(ordered[round(i * (n - 1) / 7)])
    return sorted(picks, key=lambda x: d.specs[x].volumes, reverse=True)


async def _fill(d: _Driver, batches: int, limit: int) -> list[dict[str, float]]:
    """Cache clusters smallest first in ``batches`` steps of similar volume, recording RSS
    after each: memory against volumes (and against clusters)."""
    ordered = _by_size(d.specs)
    total = sum(d.specs[n].volumes for n in ordered)
    points = [{"clusters": 0, "volumes": 0, "rss_mb": (await d.stats())["VmRSS"]}]
    done, volumes, step = 0, 0, 1
    while done < len(ordered):
        batch = []
        while done < len(ordered) and (
            not batch or volumes + d.specs[ordered[done]].volumes <= total * step / batches
        ):
            batch.append(ordered[done])
            volumes += d.specs[ordered[done]].volumes
            done += 1
        step = max(step + 1, math.ceil(volumes * batches / total))
        answers = await d.probe_all(batch, limit=limit)
        if not all(a.success for a in answers):
            raise BenchError(f"fill: {sum(not a.success for a in answers)} probes failed")
        points.append({"clusters": done, "volumes": volumes, "rss_mb": (await d.stats())["VmRSS"]})
    return points


async def _cold(d: _Driver, names: Sequence[str], reps: int) -> list[dict[str, Any]]:
    """Per cluster: floor and cold probe, interleaved, one unmeasured warm-up round."""
    rows = []
    for name in names:
        floors, probes, cpus = [], [], []
        for rep in range(reps + 1):
            floor = await d.floor([name])
            await d.forget(name)
            before = await d.stats()
            answer = await d.probe(d.probe_url(name))
            after = await d.stats()
            if not answer.success:
                raise BenchError(f"cold probe of {name} failed (HTTP {answer.status})")
            if rep:
                floors.append(floor)
                probes.append(answer.seconds)
                cpus.append(after["cpu"] - before["cpu"])
        floor, probe = statistics.median(floors), statistics.median(probes)
        volumes = d.specs[name].volumes
        rows.append(
            {
                "cluster": name,
                "volumes": volumes,
                "floor_s": floor,
                "probe_s": probe,
                "ratio": probe / floor,
                "ratios": [p / f for p, f in zip(probes, floors, strict=True)],
                "cpu_s": statistics.median(cpus),
                "cpu_s_per_1000_volumes": statistics.median(cpus) / volumes * 1000,
            }
        )
    return rows


async def _warm(d: _Driver, bare: _Child, name: str, requests: int) -> dict[str, Any]:
    """Sequential warm probes against the bare handler serving the same bytes and
    headers, in alternating blocks so drift hits both alike."""
    assert d.control is not None
    url = d.probe_url(name)
    answer = await d.probe(url)  # fills the cache (and renders this variant)
    if not answer.success:
        raise BenchError(f"warm: probe of {name} failed")
    async with d.scrapers[0].get(url, headers=SCRAPE_HEADERS) as r:
        body = await r.read()
        keep = ("Content-Type", "Content-Encoding", "Vary")
        headers = {f"X-Set-{k}": r.headers[k] for k in keep if k in r.headers}
    async with d.control.post(bare.url + "/_set", data=body, headers=headers) as r:
        r.raise_for_status()
    times: dict[str, list[float]] = {"probe": [], "bare": []}
    urls = {"probe": url, "bare": bare.url + "/bare"}
    block = max(10, requests // 10)
    for _ in range(3):  # warm both connections
        for u in urls.values():
            await d.probe(u)
    while len(times["probe"]) < requests:
        for kind, u in urls.items():
            for _ in range(block):
                times[kind].append((await d.probe(u)).seconds)
    out: dict[str, Any] = {"cluster": name, "volumes": d.specs[name].volumes, "bytes": len(body)}
    for kind, values in times.items():
        out[f"{kind}_p50_ms"] = _pct(values, 50) * 1000
        out[f"{kind}_p99_ms"] = _pct(values, 99) * 1000
    out["p50_ratio"] = out["probe_p50_ms"] / out["bare_p50_ms"]
    out["p99_ratio"] = out["probe_p99_ms"] / out["bare_p99_ms"]
    return out


async def _sweep(d: _Driver, names: Sequence[str]) -> dict[str, Any]:
    """All clusters cold, both scrapers at the same instant; the ticker runs meanwhile."""
    await d.forget()
    await d.ticker(True)
    before = await d.stats()
    t0 = time.perf_counter()
    answers = await d.probe_all(names, scrapers=2)
    last = max(a.end for a in answers) - t0
    after = await d.stats()
    await d.ticker(False)
    return {
        "seconds": last,
        "probes": len(answers),
        "ok_in_time": sum(a.success and a.seconds <= SCRAPE_TIMEOUT for a in answers),
        "max_probe_s": max(a.seconds for a in answers),
        "p50_probe_s": _pct([a.seconds for a in answers], 50),
        "cpu_s": after["cpu"] - before["cpu"],
        "max_stall_ms": after["max_stall"] * 1000,
        "p99_stall_ms": after["p99_stall"] * 1000,
        "max_gc_ms": after["max_gc"] * 1000,
        "gc_full": after["gc_full"],
        "rss_mb": after["VmRSS"],
    }


async def _spread(d: _Driver, names: Sequence[str], interval: float) -> dict[str, Any]:
    """Both scrapers probe every cluster once, each spread evenly over ``interval`` (as
    Prometheus offsets targets), the second half an interval behind the first."""
    await d.forget()
    await d.ticker(True)
    before = await d.stats()
    t0 = time.perf_counter()
    n = len(names)

    async def one(i: int, k: int) -> _Answer:
        offset = ((i / n + k / 2) % 1.0) * interval
        await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
        return await d.probe(d.probe_url(names[i]), k)

    answers = await asyncio.gather(*(one(i, k) for k in range(2) for i in range(n)))
    wall = max(a.end for a in answers) - t0
    after = await d.stats()
    await d.ticker(False)
    cpu = after["cpu"] - before["cpu"]
    return {
        "interval_s": interval,
        "wall_s": wall,
        "probes": len(answers),
        "ok_in_time": sum(a.success and a.seconds <= SCRAPE_TIMEOUT for a in answers),
        "max_probe_s": max(a.seconds for a in answers),
        "p99_probe_s": _pct([a.seconds for a in answers], 99),
        "cpu_s": cpu,
        "cpu_s_per_refresh": cpu / n,
        "cpu_busy": cpu / wall,
        "max_stall_ms": after["max_stall"] * 1000,
        "p99_stall_ms": after["p99_stall"] * 1000,
        "max_gc_ms": after["max_gc"] * 1000,
        "gc_full": after["gc_full"],
        "rss_mb": after["VmRSS"],
    }


async def _settle(d: _Driver) -> dict[str, float]:
    """Stats once no refresh is running (bounded wait)."""
    for _ in range(100):
        s = await d.stats()
        if not s["refreshing"]:
            return s
        await asyncio.sleep(0.1)
    return await d.stats()


async def _phase_fleet(opts: Options, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with _Driver(opts, work, "sized", opts.clusters) as d:
        names = sorted(d.specs)
        out["clusters"] = len(names)
        out["volumes"] = sum(s.volumes for s in d.specs.values())
        out["empty_rss_mb"] = (await d.stats())["VmRSS"]
        log(f"fleet of {len(names)} clusters, {out['volumes']} volumes: warming the simulator")
        await d.floor(names)  # the simulator caches its pages (and their gzip) on first use
        out["fleet_floor_s"] = await d.floor(names)
        log("filling the cache smallest cluster first (RSS against volumes)")
        out["fill"] = await _fill(d, batches=6, limit=16)
        out["rss_fit_per_1000_volumes"] = _fit(
            [(p["volumes"] / 1000, p["rss_mb"]) for p in out["fill"][1:]]
        )
        log("cold probes against the floor, per cluster size")
        out["cold"] = await _cold(d, _pick_sizes(d), opts.reps)
        cpu_fit = _fit([(r["volumes"] / 1000, r["cpu_s"]) for r in out["cold"]])
        out["cpu_fit_per_1000_volumes"] = cpu_fit
        log("warm probes against a bare handler")
        bare = await _Child.start("bare", work)
        try:
            biggest = max(names, key=lambda x: d.specs[x].volumes)
            hundred = min(names, key=lambda x: abs(d.specs[x].volumes - 100))
            out["warm"] = [
                await _warm(d, bare, n, opts.warm_requests)
                for n in dict.fromkeys([biggest, hundred])
            ]
        finally:
            await bare.stop()
        log(f"{opts.sweeps} sweeps: {len(names)} clusters x 2 scrapers at once")
        out["sweeps"] = [await _sweep(d, names) for _ in range(opts.sweeps)]
        out["slowest_floor_s"] = max(r["floor_s"] for r in out["cold"])
        out["upstreams"] = []
        for label, rtt, rate in opts.upstreams:
            log(f"modelled API server ({label}): {rtt * 1000:g} ms + {rate / 1e6:g} MB/s")
            await d.set_upstream(rtt, rate)
            try:
                u: dict[str, Any] = {"label": label, "rtt_s": rtt, "bytes_per_second": rate}
                u["cold"] = await _cold(d, list(dict.fromkeys([biggest, hundred])), opts.reps)
                u["fleet_floor_s"] = await d.floor(names)
                u["sweeps"] = [await _sweep(d, names) for _ in range(opts.sweeps)]
                u["slowest_floor_s"] = max(r["floor_s"] for r in u["cold"])
                out["upstreams"].append(u)
            finally:
                await d.set_upstream(0.0, 0.0)
        steady = await _settle(d)
        out["steady_rss_mb"] = steady["VmRSS"]
        out["peak_rss_mb"] = steady["VmHWM"]
    return out


async def _phase_many(opts: Options, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log(f"starting {opts.small_clusters} small clusters")
    async with _Driver(opts, work, "small", opts.small_clusters) as d:
        names = sorted(d.specs)
        out["clusters"] = len(names)
        out["volumes"] = sum(s.volumes for s in d.specs.values())
        out["empty_rss_mb"] = (await d.stats())["VmRSS"]
        for i in range(0, len(names), 100):
            await d.floor(names[i : i + 100])  # warm the simulator's page cache
        log("filling the cache (RSS against clusters)")
        out["fill"] = await _fill(d, batches=4, limit=100)
        out["rss_fit_per_cluster"] = _fit([(p["clusters"], p["rss_mb"]) for p in out["fill"]])
        log(f"2 scrapers spread over {opts.interval:g}s, twice")
        out["spread"] = [await _spread(d, names, opts.interval) for _ in range(2)]
        steady = await _settle(d)
        out["steady_rss_mb"] = steady["VmRSS"]
        out["peak_rss_mb"] = steady["VmHWM"]
    return out


# ============================================================================ report


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _sizing(fleet: dict[str, Any], many: dict[str, Any] | None) -> dict[str, Any]:
    """Clusters one replica can refresh every 30 s with half a core: the exporter's Python
    work runs on one core (the loop, plus threads that share the GIL), and half leaves room
    for bursts, the HA pair's second scrape and GC."""
    fit = fleet["cpu_fit_per_1000_volumes"]
    per_cluster = max(fit["intercept"], 0.0)
    if many:
        per_cluster = statistics.median(s["cpu_s_per_refresh"] for s in many["spread"])
        small_volumes = many["volumes"] / many["clusters"]
        per_cluster = max(per_cluster - fit["slope"] * small_volumes / 1000, 0.0)
    budget = 15.0  # CPU seconds per 30 s interval: half a core
    table = {}
    for volumes in (20, 100, 500, 2000):
        cpu = per_cluster + fit["slope"] * volumes / 1000
        table[str(volumes)] = {"cpu_s_per_refresh": cpu, "clusters_per_replica": budget / cpu}
    return {
        "cpu_s_per_cluster": per_cluster,
        "cpu_s_per_1000_volumes": fit["slope"],
        "budget_cpu_s_per_30s": budget,
        "by_cluster_volumes": table,
    }


def _row(label: str, value: str, target: str = "", ok: bool | None = None) -> tuple[str, ...]:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    return (label, value, target, verdict)


def _cold_rows(cold: Sequence[dict[str, Any]], where: str = "") -> list[tuple[str, ...]]:
    """One row per cluster size; the biggest and the one nearest 100 volumes carry the
    targets."""
    rows = []
    biggest = max(cold, key=lambda x: x["volumes"])
    hundred = min(cold, key=lambda x: abs(x["volumes"] - 100))
    for r in cold:
        target, ok = "", None
        if r is biggest:
            limit = TARGETS["cold_ratio_2000"]
            target, ok = f"<= {limit}x", r["ratio"] <= limit
        elif r["volumes"] == hundred["volumes"]:
            limit = TARGETS["cold_ratio_100"]
            target, ok = f"<= {limit}x", r["ratio"] <= limit
        rows.append(
            _row(
                f"cold probe, {r['volumes']} volumes{where}",
                f"{r['probe_s'] * 1000:.0f} ms / floor {r['floor_s'] * 1000:.0f} ms = "
                f"{r['ratio']:.2f}x; CPU {r['cpu_s']:.2f} s",
                target,
                ok,
            )
        )
    return rows


def _sweep_rows(run: dict[str, Any], clusters: int, where: str = "") -> list[tuple[str, ...]]:
    sweeps = run["sweeps"]
    sweep = statistics.median(s["seconds"] for s in sweeps)
    ratio = sweep / run["slowest_floor_s"]
    ok = sum(s["ok_in_time"] for s in sweeps)
    total = sum(s["probes"] for s in sweeps)
    return [
        _row(
            f"sweep {clusters} clusters x 2 scrapers{where} (median of {len(sweeps)})",
            f"{sweep:.2f} s / slowest floor {run['slowest_floor_s']:.2f} s = {ratio:.2f}x "
            f"(all-fleet floor {run['fleet_floor_s']:.2f} s)",
            f"<= {TARGETS['sweep_ratio']}x",
            ratio <= TARGETS["sweep_ratio"],
        ),
        _row(
            f"sweep probes ok within 10 s{where}",
            f"{ok}/{total}, slowest {max(s['max_probe_s'] for s in sweeps):.2f} s",
            "all",
            ok == total,
        ),
    ]


def _upstream_rows(f: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for u in f.get("upstreams", []):
        where = f", {u['label']} ({u['rtt_s'] * 1000:g} ms + {u['bytes_per_second'] / 1e6:g} MB/s)"
        rows += _cold_rows(u["cold"], where)
        rows += _sweep_rows(u, f["clusters"], where)
        stall = max(s["max_stall_ms"] for s in u["sweeps"])
        rows.append(
            _row(
                f"longest loop stall{where}",
                f"{stall:.1f} ms",
                f"<= {TARGETS['stall_ms']:.0f} ms",
                stall <= TARGETS["stall_ms"],
            )
        )
    return rows


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    f = result["fleet"]
    rows = _cold_rows(f["cold"])
    cpu = f["cpu_fit_per_1000_volumes"]
    rows.append(
        _row(
            "CPU per refresh",
            f"{cpu['slope']:.3f} s per 1,000 volumes + {cpu['intercept'] * 1000:.0f} ms "
            f"(R² {cpu['r2']:.3f})",
        )
    )
    for w in f["warm"]:
        rows.append(
            _row(
                f"warm probe, {w['volumes']} volumes ({w['bytes'] / 1024:.0f} KiB gz)",
                f"p50 {w['probe_p50_ms']:.2f} / bare {w['bare_p50_ms']:.2f} ms; "
                f"p99 {w['probe_p99_ms']:.2f} / bare {w['bare_p99_ms']:.2f} ms = "
                f"{w['p99_ratio']:.2f}x",
                f"p99 <= {TARGETS['warm_p99_ratio']}x",
                w["p99_ratio"] <= TARGETS["warm_p99_ratio"],
            )
        )
    sweeps = f["sweeps"]
    rows += _sweep_rows(f, f["clusters"])
    sweep_cpu = statistics.median(s["cpu_s"] for s in sweeps)
    rows.append(
        _row(
            "sweep CPU",
            f"{sweep_cpu:.2f} s = {sweep_cpu / f['volumes'] * 1000:.3f} s per 1,000 volumes",
        )
    )
    stall = max(s["max_stall_ms"] for s in sweeps)
    rows.append(
        _row(
            "longest loop stall during sweeps",
            f"{stall:.1f} ms (p99 {max(s['p99_stall_ms'] for s in sweeps):.1f} ms, "
            f"longest GC pause {max(s['max_gc_ms'] for s in sweeps):.1f} ms)",
            f"<= {TARGETS['stall_ms']:.0f} ms",
            stall <= TARGETS["stall_ms"],
        )
    )
    mem = f["rss_fit_per_1000_volumes"]
    rows.append(
        _row(
            f"RSS, {f['clusters']} clusters",
            f"empty {f['empty_rss_mb']:.0f} MB, peak {f['peak_rss_mb']:.0f} MB, "
            f"steady {f['steady_rss_mb']:.0f} MB",
            f"steady <= {TARGETS['steady_rss_mb']:.0f} MB",
            f["steady_rss_mb"] <= TARGETS["steady_rss_mb"],
        )
    )
    rows.append(
        _row(
            "RSS growth while filling",
            f"{mem['slope']:.1f} MB per 1,000 volumes (R² {mem['r2']:.3f})",
        )
    )
    rows += _upstream_rows(f)
    m = result.get("many")
    if m:
        ok = sum(s["ok_in_time"] for s in m["spread"])
        total = sum(s["probes"] for s in m["spread"])
        spread = m["spread"][-1]
        rows.append(
            _row(
                f"{m['clusters']} clusters, 2 scrapers over {spread['interval_s']:g} s",
                f"{ok}/{total} ok, slowest {max(s['max_probe_s'] for s in m['spread']):.2f} s, "
                f"CPU busy {spread['cpu_busy'] * 100:.0f}%, "
                f"stall {max(s['max_stall_ms'] for s in m['spread']):.1f} ms",
                "all served",
                ok == total,
            )
        )
        fit = m["rss_fit_per_cluster"]
        rows.append(
            _row(
                f"RSS, {m['clusters']} clusters",
                f"empty {m['empty_rss_mb']:.0f} MB, peak {m['peak_rss_mb']:.0f} MB, "
                f"steady {m['steady_rss_mb']:.0f} MB; {fit['slope'] * 1000:.0f} kB per "
                f"cluster (R² {fit['r2']:.3f})",
            )
        )
    s = result["sizing"]
    rows.append(
        _row(
            "sizing at 30 s, half a core",
            ", ".join(
                f"{int(v['clusters_per_replica'])} x {k}-volume"
                for k, v in s["by_cluster_volumes"].items()
            ),
        )
    )
    return rows


def format_table(result: dict[str, Any]) -> str:
    rows = [("figure", "measured", "target", ""), *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    m = result["machine"]
    lines = [
        f"machine: {m['summary']}; other processes used {m.get('other_load', 0.0):.2f} cores "
        f"on average during the {result['seconds']:.0f} s run"
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


# ============================================================================ plot

_FONT = {  # 3x5 glyphs, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101",
    "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "(": "001010010010001",
    ")": "100010010010100", "/": "001001010100100", " ": "000000000000000",
    ",": "000000000010100", ":": "000010000010000", "=": "000111000111000",
    "Z": "111001010100111", "J": "001001001101010", "Q": "010101101110011",
}  # fmt: skip


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int], size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                xx, yy = x + dx, y + dy
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = (yy * self.w + xx) * 3
                    self.px[i : i + 3] = bytes(rgb)

    def line(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), rgb, 2)

    def text(self, x: int, y: int, s: str, rgb: tuple[int, int, int] = (0, 0, 0)) -> None:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    self.dot(x + (i % 3) * 2, y + (i // 3) * 2, rgb, 2)
            x += 8

    def png(self) -> bytes:
        row = self.w * 3
        raw = b"".join(b"\x00" + self.px[y * row : (y + 1) * row] for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            crc = zlib.crc32(kind + data)
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def plot_png(cold: Sequence[dict[str, Any]]) -> bytes:
    """Cold probe and floor latency against cluster size, both axes logarithmic (ms,
    volumes), so small and big clusters are both readable."""
    c = _Canvas(720, 440)
    left, right, top, bottom = 80, 690, 40, 380
    points = sorted(cold, key=lambda r: r["volumes"])
    xs = [r["volumes"] for r in points]
    ys = [r[k] * 1000 for r in points for k in ("probe_s", "floor_s")]
    x0, x1 = math.log10(max(1, min(xs))), math.log10(max(xs))
    y0, y1 = math.log10(max(min(ys), 0.1) / 1.5), math.log10(max(ys) * 1.5)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def xy(volumes: float, ms: float) -> tuple[int, int]:
        x = left + (math.log10(volumes) - x0) / (x1 - x0) * (right - left)
        y = bottom - (math.log10(max(ms, 10**y0)) - y0) / (y1 - y0) * (bottom - top)
        return round(x), round(y)

    def ticks(lo: float, hi: float) -> list[float]:
        return [
            m * 10**d
            for d in range(math.floor(lo), math.ceil(hi) + 1)
            for m in (1, 2, 5)
            if lo - 1e-9 <= math.log10(m * 10**d) <= hi + 1e-9
        ]

    grey = (205, 205, 205)
    for ms in ticks(y0, y1):
        _, y = xy(xs[0], ms)
        c.line(left, y, right, y, grey)
        c.text(8, y - 5, f"{ms:g} MS")
    for v in ticks(x0, x1):
        x, _ = xy(v, 10**y0)
        c.line(x, bottom, x, bottom + 6, (0, 0, 0))
        c.text(min(x - 8, right - 8 * len(str(v))), bottom + 12, str(v))
    c.line(left, bottom, right, bottom, (0, 0, 0))
    c.line(left, top, left, bottom, (0, 0, 0))
    c.text(left, 12, "COLD PROBE AND UPSTREAM FLOOR BY CLUSTER SIZE")
    c.text(right - 230, bottom + 34, "VOLUMES PER CLUSTER")
    for key, rgb, label, ly in (
        ("probe_s", (30, 90, 200), "COLD PROBE", 56),
        ("floor_s", (220, 110, 20), "FLOOR (BARE CLIENT)", 76),
    ):
        prev = None
        for r in points:
            p = xy(r["volumes"], r[key] * 1000)
            if prev:
                c.line(*prev, *p, rgb)
            c.dot(p[0] - 3, p[1] - 3, rgb, 7)
            prev = p
        c.dot(left + 20, ly, rgb, 7)
        c.text(left + 34, ly, label, rgb)
    return c.png()


# ============================================================================ entry


def _machine() -> dict[str, Any]:
    cpu = _cpu_model()
    cores = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "os": platform.platform(),
        "summary": f"{cores}-core {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
    }


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children (the three servers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One full benchmark run; returns the result document. It also records how busy the
    machine was with other work meanwhile: on a shared 2-core machine that is the main
    source of noise in these figures."""
    started = time.time()
    busy0, own0 = _machine_busy(), _own_cpu()
    with tempfile.TemporaryDirectory(prefix="fleet-exporter-bench-") as tmp:
        work = Path(tmp)

        async def phases() -> dict[str, Any]:
            fleet = await _phase_fleet(opts, work, log)
            many = await _phase_many(opts, work, log) if opts.small_clusters else None
            return {"fleet": fleet, "many": many}

        try:
            result = await asyncio.wait_for(phases(), opts.time_limit)
        except TimeoutError:
            raise BenchError(f"the benchmark did not finish within {opts.time_limit:g}s") from None
    result["sizing"] = _sizing(result["fleet"], result["many"])
    result["machine"] = _machine()
    result["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    result["targets"] = TARGETS
    result["exporter"] = _exporter_settings()
    result["started"] = started
    result["seconds"] = time.time() - started
    other = max(0.0, (_machine_busy() - busy0) - (_own_cpu() - own0))
    result["machine"]["other_cpu_s"] = other
    result["machine"]["other_load"] = other / result["seconds"]
    return result


def _exporter_settings() -> dict[str, Any]:
    """The defaults the figures were measured with."""
    from .config import ServerSettings, Settings
    from .kube import CONNECTIONS_PER_CLUSTER, TLS_READ_BUFFER
    from .probe import AHEAD, CHUNK, GZIP_LEVEL, SLICE

    settings, server = Settings(), ServerSettings()
    return {
        "page_size": settings.page_size,
        "concurrency": settings.concurrency,
        "connections_per_cluster": CONNECTIONS_PER_CLUSTER,
        "pages_ahead": AHEAD,
        "tls_read_buffer": TLS_READ_BUFFER,
        "max_concurrent_refreshes": server.max_concurrent_refreshes,
        "gzip_level": GZIP_LEVEL,
        "slice_s": SLICE,
        "render_chunk": CHUNK,
        "gc": "probe.settle_heap() once ready",
    }


def write_results(result: dict[str, Any], opts: Options) -> dict[str, Path]:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("bench-%Y%m%d-%H%M%S", time.localtime(result["started"]))
    paths = {"json": opts.out_dir / f"{stem}.json", "table": opts.out_dir / f"{stem}.txt"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["table"].write_text(format_table(result))
    if opts.plot:
        paths["png"] = opts.out_dir / f"{stem}.png"
        paths["png"].write_bytes(plot_png(result["fleet"]["cold"]))
    return paths


def main(opts: Options) -> int:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        result = asyncio.run(run(opts, log))
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    paths = write_results(result, opts)
    print(format_table(result), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    failed = [r[0] for r in table_rows(result) if r[3] == "FAIL"]
    if failed:
        print("targets missed: " + "; ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
