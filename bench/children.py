"""The processes the benchmark drives: the simulated fleet, the exporter with measuring
routes under ``/_bench/``, and a bare aiohttp server; each exits when its stdin closes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from .common import _pct


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
    from simulator.fleet import sized_fleet, small_fleet

    return sized_fleet(n, max_volumes) if kind == "sized" else small_fleet(n)


async def _sim_child(args: argparse.Namespace) -> None:
    from simulator.server import SimulatedFleet

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
    from fleet_exporter.fleet import Fleet
    from fleet_exporter.knobs import limit_heap_fragmentation, settle_heap
    from fleet_exporter.limits import raise_file_limit
    from fleet_exporter.scheduling import cpu_turns
    from fleet_exporter.web.app import create_app

    if args.nofile:  # the limits it starts with; then raised as `serve` does
        soft, _, hard = args.nofile.partition(":")
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(soft), int(hard or soft)))
    raise_file_limit()  # as `serve` does
    limit_heap_fragmentation()
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
                "fds": len(os.listdir("/proc/self/fd")),
                "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "budget_peak": fleet.budget.peak,
                "budget_used": fleet.budget.used,
                "budget_limit": fleet.budget.limit,
                "turns_waiting": len(cpu_turns()._waiting),
            }
        )

    async def reset_peak(request: web.Request) -> web.Response:
        """VmHWM and the budget's peak start again from now (Linux: clear_refs 5)."""
        Path("/proc/self/clear_refs").write_text("5")  # noqa: ASYNC240 (procfs: instant)
        fleet.budget.peak = fleet.budget.used
        return web.Response(text="ok")

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
    app.router.add_post("/_bench/reset-peak", reset_peak)

    async def freeze_startup_heap(app: web.Application) -> None:
        # As `serve` does once the kubeconfigs are loaded (knobs.settle_heap).
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
    p = argparse.ArgumentParser(prog="python -m bench child")
    p.add_argument("role", choices=["sim", "exporter", "bare"])
    p.add_argument("--dir", default="")
    p.add_argument("--fleet", choices=["sized", "small"], default="sized")
    p.add_argument("--clusters", type=int, default=51)
    p.add_argument("--max-volumes", type=int, default=2000)
    p.add_argument("--nofile", default="", help="SOFT[:HARD] open-file limit to start with")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main = {"sim": _sim_child, "exporter": _exporter_child, "bare": _bare_child}[args.role]
    asyncio.run(main(args))
    return 0
