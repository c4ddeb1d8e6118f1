"""Metric families to Prometheus text 0.0.4 and OpenMetrics 1.0.0, and the gzip framing of
the answers.

Two ways in. ``Family`` + ``encode`` is the general one, for the few small families of a
probe's head and the refresh's own bookkeeping: byte-identical to prometheus_client's
encoders (asserted in tests/test_metrics.py), labels in name order. ``Writer`` is the fast
path for the Longhorn catalogue's tens of thousands of series: each line is written
straight from the records, each object's label values escaped once and each distinct
number formatted once, with labels in the order given, ``cluster`` first (Prometheus reads
them in any order). Escaping and number formatting are the same in both: ``\\``, ``"``
and newline escaped, non-ASCII passed through as UTF-8, floats as ``floatToGoString``.

A refresh renders its families once, into raw deflate ``Piece``s that every probe sends
as they are: a probe's answer is one gzip member made of a header, its own small head
(stored, uncompressed), the cached pieces, and a trailer whose CRC-32 is combined from
the pieces' (``crc32_combine``), so a warm gzip probe copies nothing. Both formats share
the pieces of sample lines and differ only in a few ``# HELP``/``# TYPE`` lines (counters,
help texts with quotes), kept as small pieces per format. A client that takes no gzip
gets the pieces inflated a chunk at a time while they are written.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgspec
from isal import isal_zlib
from prometheus_client.utils import floatToGoString

from .knobs import GZIP_LEVEL, INFLATE_CHUNK

EOF_LINE = b"# EOF\n"


def escape(value: str) -> str:
    """A label value as the exposition formats escape it."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


class Numbers(dict[float, str]):
    """Sample values as text, each distinct value formatted once (most are 0 and 1)."""

    def __missing__(self, value: float) -> str:
        text = self[value] = floatToGoString(value)
        return text


def meta(name: str, kind: str, help_: str, *, openmetrics: bool) -> str:
    """The ``# HELP`` and ``# TYPE`` lines. A counter is ``x_total`` in text 0.0.4 and
    ``x`` in OpenMetrics (its samples are ``x_total`` in both)."""
    if kind not in ("gauge", "counter"):
        raise ValueError(f"family {name}: unsupported type {kind!r}")
    if kind == "counter":
        base = name.removesuffix("_total")
        name = base if openmetrics else base + "_total"
    help_ = help_.replace("\\", "\\\\").replace("\n", "\\n")
    if openmetrics:
        help_ = help_.replace('"', '\\"')
    return f"# HELP {name} {help_}\n# TYPE {name} {kind}\n"


@dataclass(slots=True, frozen=True)
class Encoded:
    """One family, encoded: its ``# HELP``/``# TYPE`` lines per format, and its sample
    lines, which are the same in both formats."""

    text_meta: str
    openmetrics_meta: str
    samples: str


# --------------------------------------------------------------------------- general


@dataclass(slots=True)
class Family:
    """One metric family. ``cluster`` is not in ``labelnames``: the encoder prepends it to
    every sample. A counter's ``name`` ends in ``_total`` (appended if missing)."""

    name: str
    type: str  # "gauge" | "counter"
    help: str
    labelnames: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]]


def encode(
    families: Iterable[Family], cluster: str, *, openmetrics: bool = False, eof: bool = True
) -> bytes:
    """Text format 0.0.4, or OpenMetrics 1.0.0 (with ``# EOF`` unless ``eof=False``, for a
    caller that appends more families and the EOF itself). Every sample gets
    ``cluster="<cluster>"``."""
    out: list[str] = []
    for part in encoded(families, cluster):
        out.append(part.openmetrics_meta if openmetrics else part.text_meta)
        out.append(part.samples)
    if openmetrics and eof:
        out.append(EOF_LINE.decode())
    return "".join(out).encode("utf-8")


def encoded(families: Iterable[Family], cluster: str) -> Iterator[Encoded]:
    """Each family encoded, labels in name order as prometheus_client writes them."""
    cluster_value = escape(cluster).replace("%", "%%")
    numbers = Numbers()
    for fam in families:
        text_meta = meta(fam.name, fam.type, fam.help, openmetrics=False)
        om_meta = meta(fam.name, fam.type, fam.help, openmetrics=True)
        yield Encoded(text_meta, om_meta, _samples(fam, cluster_value, numbers))


def _samples(fam: Family, cluster_value: str, numbers: Numbers) -> str:
    sample_name = fam.name
    if fam.type == "counter":
        sample_name = fam.name.removesuffix("_total") + "_total"
    # One %-template per family, labels sorted by name with the cluster value in place,
    # and the order to pick the label values in.
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
    for values, value in fam.samples:
        if len(values) != width:
            raise ValueError(
                f"family {fam.name}: {len(values)} label values for {width} label names"
            )
        block = template % tuple(map(escape, pick(values)))
        out.append(f"{sample_name}{block} {numbers[value]}\n")
    return "".join(out)


def _no_labels(values: tuple[str, ...]) -> tuple[str, ...]:
    return ()


# --------------------------------------------------------------------------- fast path


class Writer:
    """Families written straight from records, for one cluster and one refresh.

    ``labels`` gives an object's open label block (``{cluster="c",volume="v"``), made
    once; a family's lines append their own labels, if any, close the block and add the
    value::

        block = w.labels(("volume", v.name), ("node", v.node))
        w.family("x_bytes", "gauge", "Help.", [f"x_bytes{block}}} {w.num[v.size]}\\n"])

    ``num`` formats each distinct value once, ``esc`` escapes a label value, and ``cache``
    keeps what several families share (each volume's block) for the refresh.
    """

    esc = staticmethod(escape)

    def __init__(self, cluster: str) -> None:
        self._cluster = '{cluster="' + escape(cluster) + '"'
        self.num = Numbers()
        self.cache: dict[object, Any] = {}

    def labels(self, *pairs: tuple[str, str]) -> str:
        """An open label block: ``cluster`` and ``pairs``, escaped, without the ``}``."""
        return self._cluster + "".join([f',{k}="{escape(v)}"' for k, v in pairs])

    def family(self, name: str, kind: str, help_: str, lines: Sequence[str]) -> Encoded:
        """A family with its sample lines (one without any is left out of the answer)."""
        text_meta = meta(name, kind, help_, openmetrics=False)
        om_meta = meta(name, kind, help_, openmetrics=True)
        return Encoded(text_meta, om_meta, "".join(lines))


# --------------------------------------------------------------------------- gzip


class Piece(msgspec.Struct, frozen=True, gc=False):
    """Raw deflate data ending on a byte boundary with no final block, so pieces made by
    different compressors follow each other in one stream; with the CRC-32 and the length
    of what it inflates to. Plain values, so the garbage collector does not track it
    (~10,000 of them are cached at 500 clusters)."""

    deflate: bytes
    crc: int
    size: int


class Body(msgspec.Struct, frozen=True, gc=False):
    """Rendered metrics in one format (no ``# EOF``): pieces to send in order, and the
    CRC-32 and length of them all."""

    pieces: tuple[Piece, ...]
    crc: int
    size: int

    @classmethod
    def of(cls, pieces: Iterable[Piece]) -> Body:
        pieces = tuple(pieces)
        crc = size = 0
        for p in pieces:
            crc = isal_zlib.crc32_combine(crc, p.crc, p.size)
            size += p.size
        return cls(pieces, crc, size)


class Rendered(msgspec.Struct, frozen=True, gc=False):
    """A refresh's metrics in both formats; most pieces are shared."""

    text: Body
    openmetrics: Body

    def body(self, openmetrics: bool) -> Body:
        return self.openmetrics if openmetrics else self.text

    @classmethod
    def join(cls, parts: Iterable[Rendered]) -> Rendered:
        parts = list(parts)
        return cls(
            Body.of(p for r in parts for p in r.text.pieces),
            Body.of(p for r in parts for p in r.openmetrics.pieces),
        )


def stored(data: bytes) -> Piece:
    """``data`` as stored (uncompressed) deflate blocks: for a few hundred bytes of head or
    metadata, cheaper than setting up a compressor (1.6 µs against 61 µs), barely larger."""
    blocks = []
    for start in range(0, len(data), 0xFFFF):
        chunk = data[start : start + 0xFFFF]
        blocks.append(struct.pack("<BHH", 0, len(chunk), 0xFFFF ^ len(chunk)) + chunk)
    return Piece(b"".join(blocks), zlib.crc32(data), len(data))


def rendering(families: Iterable[Encoded]) -> Generator[None, None, Rendered]:
    """Compress family by family, a step each: runs of families whose metadata is the same
    in both formats share one compressor and one piece."""
    text: list[Piece] = []
    openmetrics: list[Piece] = []
    compressor = None
    chunks: list[bytes] = []
    crc = size = 0

    def close_run() -> None:
        nonlocal compressor, crc, size
        if compressor is not None:
            chunks.append(compressor.flush(isal_zlib.Z_SYNC_FLUSH))
            piece = Piece(b"".join(chunks), crc, size)
            text.append(piece)
            openmetrics.append(piece)
            chunks.clear()
            compressor, crc, size = None, 0, 0

    for fam in families:
        if fam.text_meta == fam.openmetrics_meta:
            data = (fam.text_meta + fam.samples).encode("utf-8")
        else:
            close_run()
            text.append(stored(fam.text_meta.encode("utf-8")))
            openmetrics.append(stored(fam.openmetrics_meta.encode("utf-8")))
            data = fam.samples.encode("utf-8")
        if compressor is None:
            compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, -15)
        chunks.append(compressor.compress(data))
        crc, size = isal_zlib.crc32(data, crc), size + len(data)
        yield
    close_run()
    return Rendered(Body.of(text), Body.of(openmetrics))


def render(families: Iterable[Encoded]) -> Rendered:
    """``rendering`` in one go, for a handful of small families."""
    steps = rendering(families)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


# magic, deflate, no flags, mtime 0, no extra flags, OS unknown
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
FINAL_BLOCK = b"\x01\x00\x00\xff\xff"  # an empty stored block marked final


def gzip_member(head: bytes, body: Body, tail: bytes = b"") -> list[bytes]:
    """One gzip member holding ``head``, the body and ``tail``, as the list of byte
    strings to send: the body's pieces are not copied."""
    h, t = stored(head), stored(tail)
    crc = isal_zlib.crc32_combine(h.crc, body.crc, body.size)
    crc = isal_zlib.crc32_combine(crc, t.crc, t.size)
    size = (h.size + body.size + t.size) & 0xFFFFFFFF
    trailer = t.deflate + FINAL_BLOCK + struct.pack("<II", crc, size)
    return [GZIP_HEADER + h.deflate, *(p.deflate for p in body.pieces), trailer]


def inflating(body: Body, chunk: int = INFLATE_CHUNK) -> Iterator[bytes]:
    """The body's text, at most ``chunk`` bytes at a time (each piece inflates on its
    own). A chunk that fills up may leave output pending after the last input byte went
    in: the inflater is drained and flushed, never left when its input is."""
    for piece in body.pieces:
        inflater = isal_zlib.decompressobj(wbits=-15)
        data = piece.deflate
        while True:
            out = inflater.decompress(data, chunk)
            if out:
                yield out
            data = inflater.unconsumed_tail
            if not data and len(out) < chunk:
                break
        if rest := inflater.flush():
            yield rest


def inflate(body: Body) -> bytes:
    """The body's whole text (``fleet-exporter probe``, tests)."""
    return b"".join(inflating(body))
