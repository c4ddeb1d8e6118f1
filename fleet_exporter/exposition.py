"""Metric families, their exposition, and the Longhorn catalogue (docs/metrics.md).

Rendering is a hand-written string join rather than prometheus_client's
``generate_latest``: about five times faster at 10k-100k series
(python-implementation.md §3.2), and its output is byte-identical to prometheus_client's
text 0.0.4 and OpenMetrics 1.0.0 encoders (asserted in tests/test_metrics.py), so
label-value escaping and float formatting are exactly theirs: labels in name order,
``\\``, ``"`` and newline escaped, non-ASCII passed through as UTF-8, floats as
``floatToGoString``.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter

from isal import isal_zlib
from prometheus_client.utils import floatToGoString

from .knobs import CHUNK, GZIP_LEVEL


@dataclass(slots=True)
class Family:
    """One metric family. ``cluster`` is not in ``labelnames``: the encoder prepends it to
    every sample. A counter's ``name`` ends in ``_total`` (appended if missing)."""

    name: str
    type: str  # "gauge" | "counter"
    help: str
    labelnames: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]]


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def encode(
    families: Iterable[Family], cluster: str, *, openmetrics: bool = False, eof: bool = True
) -> bytes:
    """Text format 0.0.4, or OpenMetrics 1.0.0 (with ``# EOF`` unless ``eof=False``, for a
    caller that appends more families and the EOF itself). Every sample gets
    ``cluster="<cluster>"``."""
    out: list[str] = []
    for part in encode_parts(families, cluster):
        out.append(part.openmetrics_meta if openmetrics else part.text_meta)
        out.append(part.samples)
    if openmetrics and eof:
        out.append("# EOF\n")
    return "".join(out).encode("utf-8")


@dataclass(slots=True, frozen=True)
class EncodedFamily:
    """One family, encoded. Only the ``# HELP``/``# TYPE`` lines differ between the two
    formats; the sample lines are the same, so a caller can encode (and compress) them
    once and serve either format."""

    text_meta: str
    openmetrics_meta: str
    samples: str


def encode_parts(
    families: Iterable[Family], cluster: str, chunk: int = 0
) -> Iterator[EncodedFamily]:
    """Each family encoded in turn (see ``EncodedFamily``), so a caller can compress
    family by family instead of holding the whole exposition. With ``chunk``, a family
    with more samples comes in several parts of at most ``chunk`` samples, the later ones
    with empty metadata, so each step of the caller stays short."""
    cluster_value = _escape(cluster).replace("%", "%%")
    numbers: dict[float, str] = {}
    # Label blocks ("{cluster=...,volume=...}") by label names, then by values: a
    # volume's block recurs in every per-volume family, formatted and escaped once.
    blocks: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
    for fam in families:
        if fam.type not in ("gauge", "counter"):
            raise ValueError(f"family {fam.name}: unsupported type {fam.type!r}")
        block_cache = blocks.setdefault(fam.labelnames, {})
        size = chunk or len(fam.samples) or 1
        for start in range(0, max(len(fam.samples), 1), size):
            samples = fam.samples[start : start + size] if chunk else fam.samples
            text = _samples(fam, samples, cluster_value, numbers, block_cache)
            if start:
                yield EncodedFamily("", "", text)
            else:
                yield EncodedFamily(
                    _meta(fam, openmetrics=False), _meta(fam, openmetrics=True), text
                )


def _meta(fam: Family, *, openmetrics: bool) -> str:
    name = fam.name
    if fam.type == "counter":
        base = fam.name.removesuffix("_total")
        name = base if openmetrics else base + "_total"
    help_ = fam.help.replace("\\", "\\\\").replace("\n", "\\n")
    if openmetrics:
        help_ = help_.replace('"', '\\"')
    return f"# HELP {name} {help_}\n# TYPE {name} {fam.type}\n"


def _samples(
    fam: Family,
    samples: list[tuple[tuple[str, ...], float]],
    cluster_value: str,
    numbers: dict[float, str],
    blocks: dict[tuple[str, ...], str],
) -> str:
    sample_name = fam.name
    if fam.type == "counter":
        sample_name = fam.name.removesuffix("_total") + "_total"
    # prometheus_client writes labels sorted by name; precompute one %-template per
    # family with the cluster value in place, and the order to pick the values in.
    names = ("cluster", *fam.labelnames)
    order = sorted(range(len(names)), key=names.__getitem__)
    slots = [f'{names[i]}="{cluster_value}"' if i == 0 else f'{names[i]}="%s"' for i in order]
    template = f"{{{','.join(slots)}}}"
    picks = [i - 1 for i in order if i]
    pick: Callable[[tuple[str, ...]], tuple[str, ...]]
    if not picks:
        pick = _no_labels
    elif len(picks) == 1:
        only = picks[0]
        pick = lambda values, only=only: (values[only],)  # noqa: E731
    else:
        pick = itemgetter(*picks)
    width = len(fam.labelnames)
    out = []
    block_of, number_of = blocks.get, numbers.get
    for values, value in samples:
        block = block_of(values)
        if block is None:
            if len(values) != width:
                raise ValueError(
                    f"family {fam.name}: {len(values)} label values for {width} label names"
                )
            picked = pick(values)
            joined = "".join(picked)  # one scan instead of an _escape call per value
            if "\\" in joined or '"' in joined or "\n" in joined:
                picked = tuple(map(_escape, picked))
            block = blocks[values] = template % picked
        text = number_of(value)
        if text is None:
            text = numbers[value] = floatToGoString(value)
        out.append(f"{sample_name}{block} {text}\n")
    return "".join(out)


def _no_labels(values: tuple[str, ...]) -> tuple[str, ...]:
    return ()


# --------------------------------------------------------------------------- gzip


@dataclass(slots=True, frozen=True)
class Rendered:
    """The families as gzip members, in order, for each format. Most members are shared:
    only families whose ``# HELP``/``# TYPE`` lines differ between the formats (counters,
    help texts with quotes) split the stream, with a small member per format."""

    text: tuple[bytes, ...]
    openmetrics: tuple[bytes, ...]


def render(families: Iterable[Family], cluster: str) -> Rendered:
    """Encode and compress, all at once (see ``rendering``)."""
    steps = rendering(families, cluster)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def rendering(families: Iterable[Family], cluster: str) -> Generator[None, None, Rendered]:
    """Encode and compress family by family, ``CHUNK`` samples per step: the whole
    exposition is never held as text, and a new compressor (~0.1 ms to set up) starts only
    where the formats differ."""
    text: list[bytes] = []
    openmetrics: list[bytes] = []
    member: list[bytes] = []
    compressor = None

    def close_member() -> None:
        nonlocal compressor
        if compressor is not None:
            member.append(compressor.flush())
            shared = b"".join(member)
            text.append(shared)
            openmetrics.append(shared)
            member.clear()
            compressor = None

    for part in encode_parts(families, cluster, CHUNK):
        if part.text_meta == part.openmetrics_meta:
            chunk = part.text_meta + part.samples
        else:
            close_member()
            text.append(stored_gzip(part.text_meta.encode("utf-8")))
            openmetrics.append(stored_gzip(part.openmetrics_meta.encode("utf-8")))
            chunk = part.samples
        if compressor is None:
            compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        member.append(compressor.compress(chunk.encode("utf-8")))
        yield
    close_member()
    return Rendered(tuple(text), tuple(openmetrics))


def stored_gzip(data: bytes) -> bytes:
    """A gzip member holding ``data`` uncompressed (deflate "stored" blocks): for a few
    hundred bytes of metadata, cheaper than setting up a compressor, and barely larger."""
    blocks = []
    for start in range(0, max(len(data), 1), 0xFFFF):
        chunk = data[start : start + 0xFFFF]
        last = start + 0xFFFF >= len(data)
        blocks.append(struct.pack("<BHH", last, len(chunk), 0xFFFF ^ len(chunk)) + chunk)
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + b"".join(blocks) + trailer


# magic, deflate, no flags, mtime 0, no extra flags, OS unknown
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


# Smaller rendered bodies are inflated on the loop; bigger ones on the inflate thread.
INFLATE_INLINE_BYTES = 64 * 1024


async def inflate_members(members: Sequence[bytes]) -> bytes:
    """Cached gzip members inflated, for a client that takes no gzip."""
    if sum(map(len, members)) <= INFLATE_INLINE_BYTES:
        return _inflate(members)
    # ISA-L lets go of the GIL: the loop keeps running while a big body inflates.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(inflate_thread(), _inflate, members)


def _inflate(members: Iterable[bytes]) -> bytes:
    return b"".join(isal_zlib.decompress(m, wbits=31) for m in members)


_INFLATE_THREAD: ThreadPoolExecutor | None = None


def inflate_thread() -> ThreadPoolExecutor:
    """The thread that inflates cached metrics for clients that take no gzip: a big body
    inflates there (ISA-L lets go of the GIL) while the loop serves others. One thread, not
    asyncio's default pool: each extra thread would get its own malloc arena (more
    resident memory, measured)."""
    global _INFLATE_THREAD
    if _INFLATE_THREAD is None:
        _INFLATE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="inflate")
    return _INFLATE_THREAD
