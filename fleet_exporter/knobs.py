"""Every performance knob of the exporter, with what it measured (bench/README.md has the
runs). A knob stays only while the benchmark shows its gain. Limits a user sets (timeouts,
caps, concurrency) are settings in ``config``, not knobs.

Figures are from the 2-core VM the README names, on the benchmark's fleet (its biggest
cluster: 2,000 volumes, 148 list pages, 99 MB of JSON, 15 MB of exposition).
"""

from __future__ import annotations

import asyncio.sslproto
import contextlib
import ctypes
import gc
from collections.abc import Callable

# --------------------------------------------------------------------------- the loop

# Refresh work (decode, reduce, join, render) is pure Python and runs on the event loop,
# in steps of at most SLICE seconds, one step per loop iteration across all refreshes
# (``scheduling``), so probes and I/O get their turn in between. In a worker thread the
# loop fought that thread for the GIL at every socket read: 60-100 ms stalls in a
# 51-cluster sweep against 10-20 ms on the loop. 2 ms slices changed nothing measurable.
SLICE = 0.005
# Records handled between two checks of the clock inside a step: a page of 500 engines
# is ~15 ms of work, so a step checks about every 1-4 ms.
STEP = 128
# Samples encoded (and compressed) per render step.
CHUNK = 1024

# --------------------------------------------------------------------------- the network

# Pages of one list fetched ahead of their decode (``kube``): the next page is on its way
# while this one waits for a CPU turn. 25 ms from the API server, the 2,000-volume
# cluster went from 1.35x to 1.08x its floor; more pages ahead bought nothing and cost
# memory (up to AHEAD + 2 inflated pages per list, 0.4-1.9 MB each at page size 500).
AHEAD = 2
# Connections kept per cluster: a refresh is bound by our CPU, not by lists in flight,
# and four connections list a 2,000-volume cluster as fast as ten. Idle connections are
# most of the memory a cluster costs (~80 KiB each with the buffer below).
CONNECTIONS_PER_CLUSTER = 4
# asyncio gives every TLS connection a zero-filled 256 KiB read buffer, resident for the
# connection's life: 2.5 MiB per cluster with ten pooled connections, 1.2 GiB at 500
# clusters (tracemalloc). 16 KiB (one TLS record) cut that to ~0.4 MB per cluster. It
# costs CPU: a 3,000-volume cluster's 58 MiB of bodies took 0.15-0.18 s to read against
# 0.10 s with the default, and 64 KiB made the 25 ms sweep 3.55 -> 3.26 s but cost ~48
# KiB per pooled connection (~94 MB at 500 clusters). Memory is what sizes a replica at
# 500 clusters, so 16 KiB stays.
TLS_READ_BUFFER = 16 * 1024

# --------------------------------------------------------------------------- gzip

# Level 1 of ISA-L: the 15 MB exposition deflates in 15 ms to 2.12 MB; level 3 took 64 ms
# for 2.11 MB; zlib took 67 ms at level 1 (2.28 MB) and 192 ms at level 6 (1.95 MB). CPU
# is what limits the exporter; a few % more bytes to Prometheus is cheap.
GZIP_LEVEL = 1
# /metrics is rendered at most this often (seconds); requests in between get the same
# bytes. At 500 clusters a render costs 4.8-6.9 ms of the loop's CPU and an answer from
# the rendered body 0.20-0.25 ms; rendered for every GET it was 0.30-0.41 s each (the
# families then were bigger), and polling it every 100 ms left 174 of 1,000 probes of a
# sweep ok (README, "What the numbers mean").
RENDER_INTERVAL = 1.0
# Bytes of text inflated per step for a client that does not take gzip: the answer is
# written as it inflates, so no request holds its whole text (23 MB for a 3,000-volume
# cluster); a step of 256 KiB keeps the loop's turns short and the writes few.
INFLATE_CHUNK = 256 * 1024

# --------------------------------------------------------------------------- memory


def shrink_tls_read_buffer() -> None:
    """Process-wide, once: asyncio has no per-connection knob for its TLS read buffer."""
    protocol = asyncio.sslproto.SSLProtocol
    if getattr(protocol, "max_size", 0) > TLS_READ_BUFFER:
        protocol.max_size = TLS_READ_BUFFER


# Heap blocks this big or bigger are mmapped (and unmapped when freed) rather than carved
# from the heap. glibc's default moves the threshold up to 32 MiB as big blocks come and
# go, so bodies refused at the 32 MiB cap (an oversized list, a gzip bomb) were left as
# holes in the heap: at 500 clusters with 50 such API servers RSS reached 1.1 GB with
# 128 MiB of bodies in flight. Normal pages (0.1-2 MB) stay below it: a 128 KiB threshold
# made every page an mmap and the sweep 15% slower.
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def limit_heap_fragmentation() -> None:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` (elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def settle_heap() -> None:
    """Call once, after startup, when the kubeconfigs are loaded: the startup heap (~65k
    objects, mostly imported modules) moves to the garbage collector's permanent
    generation, so a full collection no longer walks it (51-cluster sweep: longest loop
    stall 57 -> 40 ms); and full collections become rarer (``FULL_GC_AFTER``). (Young
    collections every 10,000 allocations instead of 700 looked good in-process, but in the
    served exporter made 50 ms pauses and 50 MB more RSS.)"""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_AFTER)


# A full collection walks every tracked object: at 500 clusters ~100k (mostly the pooled
# TLS connections), 90-110 ms during which nothing is served. Python runs one after 10
# middle-generation collections (and enough new long-lived objects); after 100 instead,
# the 500-cluster fault benchmark's sweeps saw 0-1 full collections instead of 6-10,
# /metrics p99 11 ms instead of 40 ms and the longest stall 32 ms instead of 102 ms.
# Most garbage here is freed by reference counting (the records are acyclic); what waits
# longer is only cyclic garbage (closed connections, finished tasks).
FULL_GC_AFTER = 100


# When no refresh runs and the refreshes since the last trim listed this many bytes, the
# C heap's free pages go back to the system: after a sweep of the 51-cluster fleet
# (290 MB listed), or every ~100 refreshes of small clusters.
TRIM_AFTER_BYTES = 64 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``, which also
    releases free pages inside the heap, not just at its top; elsewhere nothing). A
    refresh allocates its pages (~1 MB each, inflated) on the same heap as the small
    records that outlive it, and glibc keeps the holes resident: after a 51-cluster sweep
    RSS went from 152-160 to 132 MB, in 1.5-2.5 ms. (``MALLOC_MMAP_THRESHOLD_`` instead:
    132 MB too, but the sweep 15% slower.)"""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
