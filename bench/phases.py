"""What one run measures, phase by phase."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import PLAIN_HEADERS, SCRAPE_HEADERS, SCRAPE_TIMEOUT, BenchError, Options, _fit, _pct
from .driver import _Answer, _Child, _Driver


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
    """Per cluster: floor, decode-only floor and cold probe, interleaved, one unmeasured
    warm-up round."""
    rows = []
    for name in names:
        floors, decodes, probes, cpus = [], [], [], []
        for rep in range(reps + 1):
            floor = await d.floor([name])
            decode = await d.floor([name], decode=True)
            await d.forget(name)
            before = await d.stats()
            answer = await d.probe(d.probe_url(name))
            after = await d.stats()
            if not answer.success:
                raise BenchError(f"cold probe of {name} failed (HTTP {answer.status})")
            if rep:
                floors.append(floor)
                decodes.append(decode)
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
                # A client that only decodes (see _Driver.floor): the least any exporter
                # reading the objects can take, against the same floor.
                "decode_floor_s": statistics.median(decodes),
                "decode_ratio": statistics.median(decodes) / floor,
                "ratios": [p / f for p, f in zip(probes, floors, strict=True)],
                "cpu_s": statistics.median(cpus),
                "cpu_s_per_1000_volumes": statistics.median(cpus) / volumes * 1000,
            }
        )
    return rows


async def _warm(
    d: _Driver, bare: _Child, name: str, requests: int, plain: bool = False
) -> dict[str, Any]:
    """Sequential warm probes against the bare handler serving the same bytes and
    headers, in alternating blocks so drift hits both alike. ``plain``: a client that
    takes no gzip (the exporter inflates its cached pieces while it writes them)."""
    assert d.control is not None
    headers = PLAIN_HEADERS if plain else SCRAPE_HEADERS
    url = d.probe_url(name)
    answer = await d.probe(url)  # fills the cache (and renders this variant)
    if not answer.success:
        raise BenchError(f"warm: probe of {name} failed")
    async with d.scrapers[0].get(url, headers=headers) as r:
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
            await d.probe(u, headers=headers)
    while len(times["probe"]) < requests:
        for kind, u in urls.items():
            for _ in range(block):
                times[kind].append((await d.probe(u, headers=headers)).seconds)
    out: dict[str, Any] = {
        "cluster": name,
        "volumes": d.specs[name].volumes,
        "bytes": len(body),
        "plain": plain,
    }
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
            out["warm"].append(await _warm(d, bare, biggest, opts.warm_requests, plain=True))
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
