"""``make bench``: hold the exporter to the physical limit, the upstream itself.

Three processes, so none shares another's event loop, GIL or memory: the simulated fleet
(``python -m bench child sim``), the real exporter app with a few measuring routes
under ``/_bench/`` (``... bench child exporter``), and a bare aiohttp server that returns fixed
bytes (``... bench child bare``). This process drives them over loopback and measures:

1. cold probe overhead: cold probe latency / the *floor*, a bare aiohttp client doing the
   same concurrent paginated GETs (same page size, TLS, session settings; no parsing),
   per cluster size, with the exporter's CPU seconds per refresh;
2. warm probe p50/p99 against the bare handler returning the same bytes;
3. a fleet sweep: every cluster probed at once by two scrapers (an HA pair), time to the
   last answer against the slowest cluster's floor, while a 1 ms ticker task in the
   exporter's loop records the longest event-loop stall;
4. RSS: empty, while filling (linear fit per 1,000 volumes), peak and steady; then a fresh
   exporter over 500 small clusters, scraped by the HA pair spread over one interval.

Children read their stdin and exit when it closes, so nothing outlives the run, even when
this process is killed. Everything listens on 127.0.0.1 only.
"""

from .common import SCRAPE_TIMEOUT, TARGETS, UPSTREAMS, BenchError, Options
from .report import format_table, table_rows
from .runner import main, run, write_results

__all__ = [
    "SCRAPE_TIMEOUT",
    "TARGETS",
    "UPSTREAMS",
    "BenchError",
    "Options",
    "format_table",
    "main",
    "run",
    "table_rows",
    "write_results",
]
