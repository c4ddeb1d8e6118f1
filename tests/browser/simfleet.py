"""``python -m tests.browser.simfleet --kubeconfig-dir DIR``: the simulated fleet the
browser tests run the real exporter against. Like ``python -m simulator``
(prints ``READY <port>``, stops on SIGTERM) but with its own fleet: the stock demo's
problems plus a cluster whose degraded volumes and down nodes carry hostile names, so
they are on its triage page."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from simulator.fleet import ClusterSpec, demo_fleet
from simulator.server import SimulatedFleet

HOSTILE = "hostile-names"


def specs() -> list[ClusterSpec]:
    return [
        *demo_fleet(14, seed=7),
        ClusterSpec(
            name=HOSTILE, volumes=8, nodes=3, nodes_down=1, degraded_volumes=8, hostile_names=True
        ),
    ]


async def serve(directory: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimulatedFleet(specs()) as fleet:
        fleet.write_kubeconfigs(directory)
        print(f"READY {fleet.port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig-dir", type=Path, required=True)
    asyncio.run(serve(parser.parse_args().kubeconfig_dir))
