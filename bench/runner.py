"""One full run: the phases, the machine it ran on, the files it writes."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from .common import TARGETS, BenchError, Options
from .phases import _phase_fleet, _phase_many
from .plot import plot_png
from .report import _cpu_model, _sizing, format_table, table_rows


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
    from fleet_exporter.config import ServerSettings, Settings
    from fleet_exporter.knobs import (
        AHEAD,
        CHUNK,
        CONNECTIONS_PER_CLUSTER,
        FULL_GC_AFTER,
        GZIP_LEVEL,
        MMAP_THRESHOLD,
        SLICE,
        TLS_READ_BUFFER,
        TRIM_AFTER_BYTES,
    )

    settings, server = Settings(), ServerSettings()
    return {
        "page_size": settings.page_size,
        "concurrency": settings.concurrency,
        "connections_per_cluster": CONNECTIONS_PER_CLUSTER,
        "pages_ahead": AHEAD,
        "tls_read_buffer": TLS_READ_BUFFER,
        "refreshes_at_once": "no fleet-wide limit: each cluster its own pool, CPU turns",
        "memory_budget": server.memory_budget or "a quarter of the cgroup limit, else 256 MiB",
        "malloc_trim_after_bytes": TRIM_AFTER_BYTES,
        "gzip_level": GZIP_LEVEL,
        "slice_s": SLICE,
        "render_chunk": CHUNK,
        "gc": "knobs.settle_heap() once ready",
        "full_gc_after": FULL_GC_AFTER,
        "mmap_threshold": MMAP_THRESHOLD,
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


def cli_main(argv: list[str]) -> int:
    """``python -m bench``: the flags ``make bench`` and the README use."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the exporter against the upstream floor (bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--plot", action="store_true", help="also write a PNG of latency")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    p.add_argument("--out", default="bench/results", metavar="DIR", help="results go here")
    p.add_argument(
        "--small-clusters",
        type=int,
        default=None,
        metavar="N",
        help="clusters in the many-cluster phase (0 skips it; default: 500)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="scrape interval of the many-cluster phase (default: 30)",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    opts = Options.quick(out) if args.quick else Options(out_dir=out)
    if args.plot:
        opts.plot = True
    if args.small_clusters is not None:
        opts.small_clusters = args.small_clusters
    if args.interval is not None:
        opts.interval = args.interval
    return main(opts)
