"""`python -m simulator`: run a simulated fleet until SIGTERM/SIGINT.

Writes one kubeconfig per cluster into --kubeconfig-dir, then prints exactly one line,
`READY <port>`, on stdout. The demo spawns this as a subprocess and waits for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .fleet import FLEETS
from .server import SimulatedFleet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Serve a simulated fleet of Kubernetes API servers with Longhorn objects.",
    )
    parser.add_argument(
        "--kubeconfig-dir", required=True, type=Path, help="where to write kubeconfigs"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default: any free)")
    parser.add_argument("--fleet", choices=sorted(FLEETS), default="demo", help="which fleet")
    parser.add_argument("--clusters", type=int, default=None, help="number of clusters")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fleet's content")
    parser.add_argument(
        "--no-gzip", action="store_true", help="never gzip big lists (kube-apiserver does)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")
    if args.clusters is not None and args.clusters < 1:
        parser.error("--clusters must be at least 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    options: dict[str, int] = {}
    if args.clusters is not None:
        options["n"] = args.clusters
    if args.seed is not None:
        options["seed"] = args.seed
    specs = FLEETS[args.fleet](**options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimulatedFleet(
        specs, host=args.host, port=args.port, gzip=not args.no_gzip
    ) as fleet:
        fleet.write_kubeconfigs(args.kubeconfig_dir)
        print(f"READY {fleet.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
