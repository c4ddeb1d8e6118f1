"""``python -m simulator.demo`` (``make demo``): the exporter over a simulated fleet.

This process serves the simulated API servers and scrapes the exporter every 15 s, as
Prometheus would, so the pages and the probe history fill in without a Prometheus. The
exporter itself is a child process started exactly as ``fleet-exporter serve`` is in
production: it never imports the simulator. Ctrl-C (or SIGTERM) stops both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

from .fleet import FLEETS
from .server import SimulatedFleet

DEFAULT_LISTEN = "127.0.0.1:9265"
SCRAPE_INTERVAL = 15.0
READY_TIMEOUT = 60.0


def write_demo_settings(directory: Path, clusters: list[str]) -> None:
    """Give the demo's clusters region/env labels (from names like ``eu-west-prod-01``), so
    ``/targets`` shows how extra labels reach Prometheus."""
    lines = ["clusters:"]
    for name in clusters:
        parts = name.split("-")
        if len(parts) >= 3:
            region, env = "-".join(parts[:-2]), parts[-2]
            lines.append(f"  {name}:\n    labels: {{region: {region}, env: {env}}}")
    (directory / "fleet.yaml").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m simulator.demo",
        description="Run fleet-exporter over a simulated fleet of Longhorn clusters.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help="where the exporter listens"
    )
    p.add_argument(
        "--fleet",
        choices=sorted(FLEETS),
        default="demo",
        help="which simulated fleet: demo (51 clusters of every health), sized (51 clusters "
        "sized as the benchmark's) or small500 (500 small clusters)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="passed to the exporter (TLS, basic auth); the built-in scraper then stays off",
    )
    return p.parse_args(argv)


async def scrape_forever(base: str, names: list[str]) -> None:
    """Probe every cluster every ``SCRAPE_INTERVAL`` seconds, once the exporter answers."""
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{base}/-/ready") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.2)
        while True:
            for name in names:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{base}/probe", params={"cluster": name}) as r:
                        await r.read()
            await asyncio.sleep(SCRAPE_INTERVAL)


async def run(args: argparse.Namespace, directory: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimulatedFleet(FLEETS[args.fleet]()) as sim:
        sim.write_kubeconfigs(directory)
        names = sorted(sim.names())
        write_demo_settings(directory, names)
        command = [
            sys.executable,
            "-m",
            "fleet_exporter",
            "serve",
            "--clusters",
            str(directory),
            "--listen",
            args.listen,
        ]
        if args.web_config_file:
            command += ["--web.config.file", args.web_config_file]
        exporter = await asyncio.create_subprocess_exec(*command)
        host, _, port = args.listen.rpartition(":")
        scheme = "https" if args.web_config_file else "http"
        base = f"{scheme}://{host.strip('[]') or 'localhost'}:{port}"
        print(
            f"Simulated fleet of {len(names)} Longhorn clusters is up "
            f"(kubeconfigs in {directory}).\n"
            f"Try:\n  curl '{base}/probe?cluster={names[0]}'\n"
            f"  curl '{base}/probe?cluster={names[0]}&debug=true'\n"
            f"  curl '{base}/targets'\n  open {base}/\n"
            + (
                ""
                if args.web_config_file
                else f"A built-in scraper probes every cluster every {SCRAPE_INTERVAL:g}s, as "
                "Prometheus would, so the pages fill in. "
            )
            + "Ctrl-C stops the demo.",
            flush=True,
        )
        tasks = [asyncio.create_task(stop.wait()), asyncio.create_task(exporter.wait())]
        if not args.web_config_file:
            local = f"http://{host.strip('[]') or '127.0.0.1'}:{port}"
            tasks.append(asyncio.create_task(scrape_forever(local, names)))
        try:
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if exporter.returncode is None:
                exporter.terminate()
                try:
                    await asyncio.wait_for(exporter.wait(), 15)
                except TimeoutError:
                    exporter.kill()
                    await exporter.wait()
        return 0 if stop.is_set() else (exporter.returncode or 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleet-exporter-demo-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except OSError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
