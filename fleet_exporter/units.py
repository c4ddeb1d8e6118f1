"""Durations, times and sizes for people: one way to say them on the pages and in the
terminal."""

from __future__ import annotations

import re
import time

DASH = "\N{EN DASH}"  # an absent value


def ago(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def utc(t: float | None) -> str:
    return DASH if t is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def timestamp(t: float) -> str:
    """UTC with milliseconds, for logs: ``2026-12-02T14:53:24.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size(n: float | None) -> str:
    """Bytes in binary units, three significant digits: ``3.99 TiB``, ``512 MiB``,
    ``100 B``. The exact value belongs in a tooltip (``exact_bytes``)."""
    if n is None:
        return DASH
    x, unit = float(n), 0
    while abs(x) >= 1024 and unit < len(_UNITS) - 1:
        x /= 1024
        unit += 1
    if unit == 0:
        return f"{x:.0f} B"
    digits = 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0
    return f"{x:.{digits}f} {_UNITS[unit]}"


def exact_bytes(n: float | None) -> str:
    """``4,386,235,351,040 bytes``."""
    return DASH if n is None else f"{n:,.0f} bytes"


# A byte count in Longhorn's own messages ("... Scheduled 4386235351040, Available
# 1288490188800, Maximum 5497558138880"): a word about storage, then a long integer.
_SIZE_IN_TEXT = re.compile(
    r"(?i)\b(scheduled|available|maximum|reserved|requires|size|capacity|used|storage\w*)"
    r"(:?\s+)(\d{7,})\b"
)


def split_sizes(text: str) -> list[tuple[str, int | None]]:
    """``text`` in pieces: plain text (``None``), and each byte count said in it as its
    ``size`` with the exact number, so a page can show ``Scheduled 3.99 TiB`` with the
    bytes on hover and a terminal the size alone."""
    out: list[tuple[str, int | None]] = []
    at = 0
    for m in _SIZE_IN_TEXT.finditer(text):
        out.append((text[at : m.start(3)], None))
        n = int(m.group(3))
        out.append((size(n), n))
        at = m.end(3)
    if at < len(text):
        out.append((text[at:], None))
    return [(t, n) for t, n in out if t]


def with_sizes(text: str) -> str:
    """``text`` with each byte count said in binary units (for a terminal)."""
    return "".join(t for t, _ in split_sizes(text))
