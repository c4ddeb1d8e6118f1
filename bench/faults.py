"""``python -m bench faults`` (``make bench-faults``): one failure domain for the whole
fleet, measured. For each fault a sick API server can have, applied to a sixth of a fleet
of 51 (sized as the main benchmark's) and a tenth of one of 500 small clusters at the same
time, an HA pair scrapes every cluster as Prometheus would (spread over the interval,
then once all at once), and the healthy clusters' probes are held to the fault-free run:

- every healthy probe answers within its scrape timeout with ``probe_success 1``, data no
  older than the cache TTL plus its own refresh (at most the scrape timeout);
- healthy p99 within 1.3x of the fault-free run;
- peak RSS at most the fault-free run's plus the memory budget (what sick clusters may
  cost), and RSS back within 10 % of the fault-free run's once they are quiet.

Then at 500 clusters: the exporter started with a soft open-file limit of 1024 (raised to
the hard limit as ``serve`` does), and ``/metrics`` polled every 100 ms during the sweeps.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import BenchError, Options, _pct
from .driver import _Driver

FAULTS = ("timeout", "slow_drip", "endless_continue", "oversized", "gzip_bomb", "throttle", "reset")
P99_RATIO = 1.3
RSS_BACK = 1.10  # RSS after a scenario against the fault-free run's
METRICS_P99_MS = 20.0


@dataclass(frozen=True)
class Size:
    label: str
    fleet: str  # "sized" or "small"
    clusters: int
    faulty: int
    interval: float  # scrape interval; the timeout is this less a second (at most 10 s)
    rounds: int
    refresh_timeout: str = "60s"  # the default; the smoke run's hung refreshes end sooner

    @property
    def timeout(self) -> float:
        return min(10.0, self.interval - 1.0)

    @property
    def fleet_yaml(self) -> str:
        # As the docs advise: a TTL a little under the interval. The memory budget the
        # shipped Deployment's 512Mi limit gives (a quarter), whatever this machine has.
        return (
            "server:\n  memory_budget: 128Mi\ndefaults:\n"
            f"  cache_ttl: {self.interval - 1:g}s\n  refresh_timeout: {self.refresh_timeout}\n"
        )


SIZES = (
    Size("51 clusters", "sized", 51, 8, 10.0, 3),
    Size("500 clusters", "small", 500, 50, 15.0, 3),
)
QUICK = (Size("6 clusters", "small", 6, 2, 3.0, 2, "4s"),)


@dataclass
class _Probe:
    cluster: str
    seconds: float
    success: bool
    age: float | None
    why: str = ""  # of a failure: the HTTP status, probe_success 0, or late


def _head(body: bytes, gzipped: bool) -> bytes:
    """The answer's first lines (the probe's own head comes first), from one gzip member."""
    if gzipped:
        body = zlib.decompressobj(31).decompress(body, 4096)
    return body[:4096]


def _value(head: bytes, name: bytes) -> float | None:
    for line in head.split(b"\n"):
        if line.startswith(name + b"{"):
            return float(line.rsplit(b" ", 1)[-1])
    return None


async def _probe(d: _Driver, name: str, scraper: int, scrape_timeout: float) -> _Probe:
    session = d.scrapers[scraper]
    headers = {
        "Accept-Encoding": "gzip",
        "X-Prometheus-Scrape-Timeout-Seconds": f"{scrape_timeout:g}",
    }
    t0 = time.perf_counter()
    try:
        async with session.get(d.probe_url(name), headers=headers) as r:
            body = await r.read()
            gz = r.headers.get("Content-Encoding") == "gzip"
            status = r.status
    except (TimeoutError, OSError) as e:
        raise BenchError(f"probe of {name}: {e}") from None
    seconds = time.perf_counter() - t0
    head = _head(body, gz) if status == 200 else b""
    success = _value(head, b"probe_success")
    why = (
        f"HTTP {status}"
        if status != 200
        else "probe_success 0"
        if success != 1.0
        else "late"
        if seconds > scrape_timeout
        else ""
    )
    return _Probe(name, seconds, not why, _value(head, b"longhorn_exporter_data_age_seconds"), why)


async def _scrape(d: _Driver, names: Sequence[str], size: Size, spread: bool) -> list[_Probe]:
    """Both scrapers probe every cluster once: spread over the interval as Prometheus
    offsets its targets (the second scraper half an interval behind), or all at once."""
    t0 = time.perf_counter()
    n = len(names)

    async def one(i: int, k: int) -> _Probe:
        if spread:
            offset = ((i / n + k / 2) % 1.0) * size.interval
            await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
        return await _probe(d, names[i], k, size.timeout)

    return list(await asyncio.gather(*(one(i, k) for k in range(2) for i in range(n))))


async def _set_fault(d: _Driver, names: Sequence[str], fault: str | None) -> None:
    assert d.control is not None and d.sim is not None
    for name in names:
        url = f"https://127.0.0.1:{d.sim.port}/_sim/clusters/{name}/faults"
        if fault is None:
            async with d.control.delete(url, ssl=False) as r:
                r.raise_for_status()
        else:
            async with d.control.put(url, json={"fault": fault, "resource": None}, ssl=False) as r:
                r.raise_for_status()


async def _watch(d: _Driver, stop: asyncio.Event, into: dict[str, float]) -> None:
    """The exporter's descriptors at their highest while a scenario runs."""
    while not stop.is_set():
        into["fds"] = max(into.get("fds", 0), (await d.stats())["fds"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _scenario(
    d: _Driver, size: Size, names: Sequence[str], faulty: Sequence[str], fault: str | None
) -> dict[str, Any]:
    await _set_fault(d, faulty, fault)
    assert d.control is not None and d.exporter is not None
    async with d.control.post(d.exporter.url + "/_bench/reset-peak") as r:
        r.raise_for_status()
    healthy = set(names) - set(faulty)
    watched: dict[str, float] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(d, stop, watched))
    probes: list[_Probe] = []
    try:
        for _ in range(size.rounds):
            probes += await _scrape(d, names, size, spread=True)
        await d.forget()  # everything cold at once, as after a restart
        probes += await _scrape(d, names, size, spread=False)
    finally:
        stop.set()
        await watcher
        await _set_fault(d, faulty, None)
    stats = await d.stats()
    # Quiet again: no refresh left running. A hung one ends by its refresh_timeout (60 s),
    # so wait that long, not less: RSS taken while they run is not "after".
    for _ in range(140):
        if not stats["refreshing"]:
            break
        await asyncio.sleep(0.5)
        stats = await d.stats()
    ok = [p for p in probes if p.cluster in healthy]
    ages = [p.age for p in ok if p.age is not None]
    return {
        "fault": fault or "none",
        "healthy_probes": len(ok),
        "healthy_ok": sum(p.success for p in ok),
        "healthy_failures": dict(collections.Counter(p.why for p in ok if p.why)),
        "healthy_p99_ms": _pct([p.seconds for p in ok], 99) * 1000,
        "max_age_s": max(ages) if ages else None,
        # Data no older than the cache TTL plus its own refresh, which a served answer
        # waited for at most the scrape timeout.
        "age_limit_s": (size.interval - 1) + size.timeout,
        "faulty_answered_in_time": sum(
            p.seconds <= size.timeout for p in probes if p.cluster not in healthy
        ),
        "faulty_probes": sum(p.cluster not in healthy for p in probes),
        "peak_rss_mb": stats["VmHWM"],
        "rss_mb": stats["VmRSS"],
        "max_fds": watched.get("fds", stats["fds"]),
        "budget_peak_mb": stats["budget_peak"] / (1 << 20),
        "budget_mb": stats["budget_limit"] / (1 << 20),
    }


def _pick_faulty(d: _Driver, count: int) -> list[str]:
    """Spread over the sizes, never the biggest cluster (the healthy p99 is its)."""
    ordered = sorted(d.specs, key=lambda n: (d.specs[n].volumes, n))[:-1]
    step = max(1, len(ordered) // count)
    return ordered[::step][:count]


async def _metrics_poll(d: _Driver, stop: asyncio.Event, seconds: list[float]) -> None:
    assert d.control is not None and d.exporter is not None
    while not stop.is_set():
        t0 = time.perf_counter()
        async with d.control.get(d.exporter.url + "/metrics") as r:
            await r.read()
        seconds.append(time.perf_counter() - t0)
        await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))


async def run_size(
    opts: Options, work: Path, size: Size, faults: Sequence[str], log: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {"size": size.label, "scenarios": []}
    async with _Driver(opts, work, size.fleet, size.clusters, size.fleet_yaml) as d:
        names = sorted(d.specs)
        faulty = _pick_faulty(d, size.faulty)
        out["faulty"] = faulty
        await d.floor(names[:100])  # the simulator builds and caches its pages
        for fault in (None, *faults):
            log(f"{size.label}: {fault or 'no fault'} on {len(faulty) if fault else 0}")
            out["scenarios"].append(await _scenario(d, size, names, faulty, fault))
        if size.fleet == "small" and faults == FAULTS:
            log(f"{size.label}: /metrics polled every 100 ms during the sweeps")
            polled: list[float] = []
            stop = asyncio.Event()
            poller = asyncio.create_task(_metrics_poll(d, stop, polled))
            try:  # the faulty clusters are still backing off: not counted as healthy
                scenario = await _scenario(d, size, names, faulty, None)
            finally:
                stop.set()
                await poller
            out["metrics_polled"] = {
                "healthy_p99_ms": scenario["healthy_p99_ms"],
                "healthy_ok": scenario["healthy_ok"],
                "healthy_probes": scenario["healthy_probes"],
                "metrics_p99_ms": _pct(polled, 99) * 1000,
                "metrics_gets": len(polled),
            }
    if size.fleet == "small" and faults == FAULTS:
        log(f"{size.label}: started with a soft open-file limit of 1024")
        async with _Driver(
            opts, work, size.fleet, size.clusters, size.fleet_yaml, ("--nofile", "1024:20000")
        ) as d:
            names = sorted(d.specs)
            out["nofile_1024"] = await _scenario(d, size, names, [], None)
            out["nofile_1024"]["fd_limit"] = (await d.stats())["fd_limit"]
    return out


async def run(
    opts: Options,
    work: Path,
    sizes: Sequence[Size],
    faults: Sequence[str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    return {"sizes": [await run_size(opts, work, s, faults, log) for s in sizes]}


def table(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per size and fault: the healthy clusters' probes, and what it cost."""
    rows = [
        (
            "fleet",
            "fault",
            "healthy ok",
            "p99 ms (x fault-free)",
            "max data age",
            "RSS peak / after",
            "fds",
            "budget peak",
            "verdict",
        )
    ]
    for s in result["sizes"]:
        base = s["scenarios"][0]
        for sc in s["scenarios"]:
            ratio = sc["healthy_p99_ms"] / max(base["healthy_p99_ms"], 1e-9)
            good = (
                sc["healthy_ok"] == sc["healthy_probes"]
                and ratio <= P99_RATIO
                and (sc["max_age_s"] or 0) <= sc["age_limit_s"]
                and sc["peak_rss_mb"] <= base["peak_rss_mb"] + sc["budget_mb"]
                and sc["rss_mb"] <= base["rss_mb"] * RSS_BACK
            )
            rows.append(
                (
                    s["size"],
                    sc["fault"],
                    f"{sc['healthy_ok']}/{sc['healthy_probes']}",
                    f"{sc['healthy_p99_ms']:.0f} ({ratio:.2f}x)",
                    "-"
                    if sc["max_age_s"] is None
                    else f"{sc['max_age_s']:.1f} s (<= {sc['age_limit_s']:g})",
                    f"{sc['peak_rss_mb']:.0f} / {sc['rss_mb']:.0f} MB",
                    f"{sc['max_fds']:.0f}",
                    f"{sc['budget_peak_mb']:.0f}/{sc['budget_mb']:.0f} MiB",
                    "PASS" if good else "FAIL",
                )
            )
        if "metrics_polled" in s:
            m = s["metrics_polled"]
            ratio = m["healthy_p99_ms"] / max(base["healthy_p99_ms"], 1e-9)
            good = m["metrics_p99_ms"] <= METRICS_P99_MS and m["healthy_ok"] == m["healthy_probes"]
            rows.append(
                (
                    s["size"],
                    f"/metrics every 100 ms: p99 {m['metrics_p99_ms']:.1f} ms",
                    f"{m['healthy_ok']}/{m['healthy_probes']}",
                    f"{m['healthy_p99_ms']:.0f} ({ratio:.2f}x)",
                    "",
                    "",
                    "",
                    "",
                    "PASS" if good else "FAIL",
                )
            )
        if "nofile_1024" in s:
            n = s["nofile_1024"]
            good = n["healthy_ok"] == n["healthy_probes"]
            rows.append(
                (
                    s["size"],
                    f"soft open-file limit 1024 (raised to {n['fd_limit']})",
                    f"{n['healthy_ok']}/{n['healthy_probes']}",
                    f"{n['healthy_p99_ms']:.0f}",
                    "",
                    f"{n['peak_rss_mb']:.0f} MB",
                    f"{n['max_fds']:.0f}",
                    "",
                    "PASS" if good else "FAIL",
                )
            )
    return rows


def format_rows(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def failed(result: dict[str, Any]) -> list[str]:
    return [f"{r[0]} / {r[1]}" for r in table(result)[1:] if r[-1] == "FAIL"]


def main(argv: Sequence[str]) -> int:
    """``python -m bench faults [--quick] [--size N] [--fault F ...] [--out DIR]``."""
    import argparse
    import json
    import sys
    import tempfile

    p = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 6 clusters, seconds")
    p.add_argument(
        "--size",
        type=int,
        choices=[s.clusters for s in SIZES],
        help="only this fleet size (default: both)",
    )
    p.add_argument(
        "--fault",
        action="append",
        choices=FAULTS,
        help="only this fault, repeatable; the /metrics and open-file rows need every fault",
    )
    p.add_argument("--out", default="bench/results", metavar="DIR", help="results go here")
    args = p.parse_args(argv)
    out = Path(args.out)
    opts = Options.quick(out) if args.quick else Options(out_dir=out)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        try:
            sizes = QUICK if args.quick else [s for s in SIZES if args.size in (None, s.clusters)]
            faults = tuple(args.fault) if args.fault else FAULTS
            result = asyncio.run(run(opts, Path(tmp), sizes, faults, log))
        except BenchError as e:
            print(f"bench faults failed: {e}", file=sys.stderr)
            return 1
    text = format_rows(table(result))
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"faults-{stamp}.json").write_text(json.dumps(result, indent=1))
    (out / f"faults-{stamp}.txt").write_text(text)
    print(text, end="")
    if missed := failed(result):
        print("targets missed: " + "; ".join(missed))
    return 0
