"""This process's side: start the children, the floor client, the two scrapers."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from isal import isal_zlib

from .children import _fleet_specs
from .common import CHILD_START_TIMEOUT, REPO, SCRAPE_HEADERS, BenchError, Options


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
                "bench",
                "child",
                role,
                *args,
                cwd=REPO,  # ``bench`` is a directory of the repository, not an installed package
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


# Long TTL: the benchmark decides when data goes cold (/_bench/forget), so a warm
# measurement never straddles a refresh.
LONG_TTL = "defaults:\n  cache_ttl: 1h\n  max_staleness: 2h\n"


class _Driver:
    """One phase's processes and clients: a simulator, an exporter in front of it, two
    scraper sessions and the floor client."""

    def __init__(
        self,
        opts: Options,
        work: Path,
        fleet: str,
        n: int,
        fleet_yaml: str = LONG_TTL,
        exporter_args: Sequence[str] = (),
    ) -> None:
        """``fleet_yaml`` is the exporter's settings (default: a long TTL, so the
        benchmark decides when data goes cold); ``exporter_args`` go to its child."""
        self.opts = opts
        self.fleet_yaml = fleet_yaml
        self.exporter_args = tuple(exporter_args)
        self.work = work
        self.fleet = fleet
        self.n = n
        self.dir = work / f"clusters-{fleet}"
        self.specs = {s.name: s for s in _fleet_specs(fleet, n, opts.max_volumes)}
        self.sim: _Child | None = None
        self.exporter: _Child | None = None
        self.scrapers: list[aiohttp.ClientSession] = []
        self.control: aiohttp.ClientSession | None = None
        self.floor_sessions: dict[str, aiohttp.ClientSession] = {}
        self.upstreams: dict[str, _Upstream] = {}

    async def __aenter__(self) -> _Driver:
        from fleet_exporter.kube import new_session

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
        (self.dir / "fleet.yaml").write_text(self.fleet_yaml)
        self.exporter = await _Child.start(
            "exporter", self.work, "--dir", str(self.dir), *self.exporter_args
        )
        self.scrapers = [self._client() for _ in range(2)]
        self.control = self._client()
        # The floor uses the exporter's own session settings (a session per cluster), and
        # inflates with the exporter's gzip library (ISA-L), so the ratio compares the
        # work done, not two gzip implementations. (aiohttp's backend is process-wide;
        # the scrapers here do not inflate.)
        self.floor_sessions = {name: new_session() for name in self.specs}
        aiohttp.set_zlib_backend(isal_zlib)
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
        for s in [*self.scrapers, self.control, *self.floor_sessions.values()]:
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
        from fleet_exporter.credentials import load_credentials
        from fleet_exporter.kube import LONGHORN_API

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

    async def floor(self, names: Sequence[str], decode: bool = False) -> float:
        """Seconds for a bare client to list every resource of ``names`` (all clusters
        at once; each cluster's lists concurrently, each paginated), bodies read, no
        parsing beyond finding the continue token.

        With ``decode``, each page is also decoded with the exporter's own typed decoder
        (msgspec) and then dropped: no reduce, no metrics. That is the least any exporter
        that reads the objects must do, so its time bounds the cold ratio from below."""
        from fleet_exporter.config import Settings
        from fleet_exporter.longhorn import RESOURCES
        from fleet_exporter.longhorn.wire import decode_page

        settings = Settings()

        async def one_list(up: _Upstream, resource: str, limit: asyncio.Semaphore) -> None:
            session = self.floor_sessions[up.name]  # one per cluster, as the exporter's
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
                        # Inflated inline as the body arrives (ISA-L, as set above).
                        auto_decompress=True,
                    ) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            raise BenchError(f"floor: {up.name} {resource}: HTTP {resp.status}")
                    if decode:
                        token = decode_page(resource, body)[2].continue_ or ""
                    else:
                        token = _continue_token(body)
                    if not token:
                        return

        async def one_cluster(up: _Upstream) -> None:
            limit = asyncio.Semaphore(settings.concurrency)
            await asyncio.gather(*(one_list(up, r, limit) for r in RESOURCES))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_cluster(self.upstreams[n]) for n in names))
        return time.perf_counter() - t0

    async def probe(
        self, url: str, scraper: int = 0, headers: dict[str, str] | None = None
    ) -> _Answer:
        session = self.scrapers[scraper]
        t0 = time.perf_counter()
        async with session.get(url, headers=headers or SCRAPE_HEADERS) as resp:
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
