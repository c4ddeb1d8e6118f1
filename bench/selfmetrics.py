"""``python -m bench.selfmetrics``: what ``/metrics`` costs at fleet scale, and what polling
it costs the probes.

Processes, as in the benchmark (``bench/children.py``): the simulator serving
``small_fleet(N)`` (default 500 clusters of 5-20 volumes), the exporter in front of it with
its ``/_bench/`` routes, this driver (the two scrapers), and a poller of its own
(``python -m bench.selfmetrics poll URL``), so neither the scrapers' work nor the poller's
shows in the other's timings. Loopback only; the load part (about 40 s at 500 clusters on
the 2-core machine) stops by itself.

1. One sweep fills every per-cluster series: both scrapers probe every cluster at once.
2. Idle: body size (plain and gzip) and series count; the exporter's CPU per ``GET
   /metrics`` (``process_time()`` read through ``/_bench/stats`` before and after, less
   the cost of the stats call itself), for GETs more than a second apart (each renders)
   and for GETs back to back (each may be answered from a cached body).
3. Sweeps, each with every cluster cold, alternately without and with the poller GETting
   ``/metrics`` every 100 ms: *aligned* (both scrapers probe every cluster at the same
   instant, 2 N requests: the worst case) and *spread* (each scraper's probes evenly over
   ``--spread`` seconds, the second scraper half of that behind: as Prometheus spreads its
   targets). Per sweep: answers with ``probe_success 1``, 503s, the slowest answer, the
   exporter's CPU and its longest event-loop stall (the benchmark's 1 ms ticker); and the
   poller's latencies.

The fleet.yaml sets ``cache_ttl: 1h`` (the script decides when data goes cold, through
``/_bench/forget``) and, with ``--probe-limit``, ``server.max_concurrent_probes``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import aiohttp

from .common import REPO, SCRAPE_HEADERS, _pct
from .driver import _Child, _probe_success

POLL_EVERY = 0.1
LOAD_BUDGET = 30.0  # seconds of sweeps after which no new pair of sweeps starts


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def _poll_main(base: str) -> None:
    """The poller process: GET ``/metrics`` every POLL_EVERY, and ``/healthz`` (the
    cheapest route: what the event loop alone costs) half-way between, until stdin closes;
    then print the latencies (seconds) of each as JSON."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    latencies: dict[str, list[float]] = {"/metrics": [], "/healthz": []}
    async with _session() as session:
        print("READY 0", flush=True)
        while not stop.is_set():
            for path in latencies:
                started = time.perf_counter()
                async with session.get(base + path, headers=SCRAPE_HEADERS) as r:
                    await r.read()
                    r.raise_for_status()
                latencies[path].append(time.perf_counter() - started)
                wait = max(0.0, POLL_EVERY / 2 - (time.perf_counter() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
    print(json.dumps(latencies), flush=True)


class _Poller:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str) -> _Poller:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.selfmetrics",
            "poll",
            url,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return cls(proc)

    async def stop(self) -> dict[str, list[float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = await asyncio.wait_for(self.proc.stdout.read(), 30)
        await self.proc.wait()
        return json.loads(out)


class _Run:
    def __init__(self, exporter: _Child, names: list[str]) -> None:
        self.url = exporter.url
        self.names = names
        self.session = _session()

    async def stats(self) -> dict[str, float]:
        async with self.session.get(self.url + "/_bench/stats") as r:
            return await r.json()

    async def cpu(self) -> float:
        return (await self.stats())["cpu"]

    async def metrics(self, headers: dict[str, str]) -> bytes:
        async with self.session.get(self.url + "/metrics", headers=headers) as r:
            r.raise_for_status()
            return await r.read()

    async def probe(self, name: str, delay: float = 0.0) -> tuple[bool, float, int]:
        if delay:
            await asyncio.sleep(delay)
        started = time.perf_counter()
        url = f"{self.url}/probe?cluster={name}"
        async with self.session.get(url, headers=SCRAPE_HEADERS) as r:
            body = await r.read()
            ok = r.status == 200 and _probe_success(body, True)
            return ok, time.perf_counter() - started, r.status

    async def sweep(self, spread: float = 0.0) -> dict[str, float]:
        """Every cluster cold, then two probes of each: at once, or spread."""
        async with self.session.post(self.url + "/_bench/forget") as r:
            r.raise_for_status()
        async with self.session.post(self.url + "/_bench/ticker", params={"on": "1"}) as r:
            r.raise_for_status()
        cpu0, t0 = await self.cpu(), time.perf_counter()
        n = len(self.names)
        answers = await asyncio.gather(
            *(
                self.probe(name, spread * (i / n + k / 2))
                for k in range(2)
                for i, name in enumerate(self.names)
            )
        )
        seconds = time.perf_counter() - t0
        stats = await self.stats()
        async with self.session.post(self.url + "/_bench/ticker", params={"on": "0"}) as r:
            r.raise_for_status()
        return {
            "probes": len(answers),
            "ok": sum(a[0] for a in answers),
            "503": sum(a[2] == 503 for a in answers),
            "slowest_s": round(max(a[1] for a in answers), 3),
            "seconds": round(seconds, 2),
            "cpu_s": round(stats["cpu"] - cpu0, 3),
            "max_stall_ms": round(stats["max_stall"] * 1e3, 1),
            "p99_stall_ms": round(stats["p99_stall"] * 1e3, 1),
            "max_gc_ms": round(stats["max_gc"] * 1e3, 1),
        }


async def _per_get_cpu(run: _Run, gets: int, spaced: float) -> list[float]:
    """CPU seconds of the exporter per ``GET /metrics``, each less a stats call's (the
    median of those measured alongside)."""
    costs, overheads = [], []
    for _ in range(gets):
        if spaced:
            await asyncio.sleep(spaced)
        a = await run.cpu()
        b = await run.cpu()
        await run.metrics(SCRAPE_HEADERS)
        c = await run.cpu()
        overheads.append(b - a)
        costs.append(c - b)
    overhead = statistics.median(overheads)
    return sorted(c - overhead for c in costs)


def _ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1e3:.2f} ms "
        f"(min {values[0] * 1e3:.2f}, max {values[-1] * 1e3:.2f}, n={len(values)})"
    )


async def main(argv: list[str]) -> int:
    if argv[:1] == ["poll"]:
        await _poll_main(argv[1])
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.selfmetrics")
    p.add_argument("--clusters", type=int, default=500)
    p.add_argument("--reps", type=int, default=2, help="aligned sweeps, with and without polling")
    p.add_argument("--spread", type=float, default=10.0, help="seconds a spread sweep takes")
    p.add_argument("--probe-limit", type=int, default=0, help="server.max_concurrent_probes")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="selfmetrics-") as tmp:
        work = Path(tmp)
        clusters = work / "clusters"
        _log(f"starting {args.clusters} simulated clusters")
        n = str(args.clusters)
        sim = await _Child.start(
            "sim", work, "--dir", str(clusters), "--fleet", "small", "--clusters", n
        )
        exporter = None
        try:
            yaml = "defaults:\n  cache_ttl: 1h\n  max_staleness: 2h\n"
            if args.probe_limit:
                yaml += f"server:\n  max_concurrent_probes: {args.probe_limit}\n"
            (clusters / "fleet.yaml").write_text(yaml)
            exporter = await _Child.start("exporter", work, "--dir", str(clusters))
            names = sorted(p.stem for p in clusters.glob("*.yaml") if p.stem != "fleet")
            run = _Run(exporter, names)
            try:
                for _ in range(600):
                    async with run.session.get(run.url + "/-/ready") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
                _log("first sweep (fills every per-cluster series)")
                _log(f"  {await run.sweep()}")
                await asyncio.sleep(1.1)
                plain = await run.metrics({"Accept-Encoding": "identity"})
                gz = await run.metrics({"Accept-Encoding": "gzip"})
                text = zlib.decompress(gz, 31) if gz[:2] == b"\x1f\x8b" else gz
                lines = [ln for ln in plain.split(b"\n") if ln and not ln.startswith(b"#")]
                per_cluster = sum(b'cluster="' in ln for ln in lines)
                _log(
                    f"/metrics at {len(names)} clusters: {len(plain)} bytes plain, "
                    f"{len(gz)} gzip ({len(text)} inflated); {len(lines)} series, "
                    f"{per_cluster} with a cluster label ({per_cluster / len(names):.1f} "
                    "per cluster)"
                )
                spaced = await _per_get_cpu(run, 8, 1.1)
                back_to_back = await _per_get_cpu(run, 40, 0.0)
                _log("exporter CPU per GET /metrics (OpenMetrics + gzip, as Prometheus asks):")
                _log(f"  a second or more apart: {_ms(spaced)}")
                _log(f"  back to back:           {_ms(back_to_back)}")
                load_started = time.monotonic()
                shapes = [("aligned", 0.0)] * args.reps + [("spread", args.spread)]
                for shape, spread in shapes:
                    if time.monotonic() - load_started > LOAD_BUDGET:
                        _log(f"left out: the {shape} sweeps (the load part stays under a minute)")
                        continue
                    for polling in (False, True):
                        poller = await _Poller.start(run.url) if polling else None
                        result = await run.sweep(spread)
                        polled = await poller.stop() if poller is not None else {}
                        _log(f"{shape} sweep, {'polled' if polling else 'no poller'}: {result}")
                        for path, times in polled.items():
                            _log(
                                f"  {path} every {POLL_EVERY * 1e3:.0f} ms: {len(times)} GETs, "
                                f"p50 {_pct(times, 50) * 1e3:.1f} ms, "
                                f"p90 {_pct(times, 90) * 1e3:.1f} ms, "
                                f"p99 {_pct(times, 99) * 1e3:.1f} ms, "
                                f"max {max(times) * 1e3:.1f} ms"
                            )
                _log(f"load part: {time.monotonic() - load_started:.0f} s")
            finally:
                await run.session.close()
        finally:
            if exporter is not None:
                await exporter.stop()
            await sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
