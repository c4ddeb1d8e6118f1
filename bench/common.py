"""What every part of the benchmark shares: its options, its targets, the scrape it
imitates, and two small statistics helpers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository: ``bench`` runs from here

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
# The targets (issue 16; the plain-text one issue 18): the biggest cluster's cold probe
# against the bare client's floor, on loopback and 1 ms from a modelled API server; CPU
# per 1,000 volumes of a cold refresh; warm probes against a bare aiohttp handler serving
# the same bytes, gzip and plain; the loop's longest stall in a 51-cluster HA sweep;
# steady RSS for 51 clusters.
TARGETS = {
    "cold_ratio_loopback": 1.5,
    "cold_ratio_1ms": 1.3,
    "cpu_per_1000_volumes": 0.25,
    "warm_p99_ratio": 1.2,
    "warm_plain_p99_ratio": 1.5,
    "stall_ms": 50.0,
    "steady_rss_mb": 200.0,
}
PLAIN_HEADERS = {**SCRAPE_HEADERS, "Accept-Encoding": "identity"}
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
