"""A PNG of cold-probe latency against cluster size, drawn without a plotting library."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

_FONT = {  # 3x5 glyphs, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101",
    "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "(": "001010010010001",
    ")": "100010010010100", "/": "001001010100100", " ": "000000000000000",
    ",": "000000000010100", ":": "000010000010000", "=": "000111000111000",
    "Z": "111001010100111", "J": "001001001101010", "Q": "010101101110011",
}  # fmt: skip


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int], size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                xx, yy = x + dx, y + dy
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = (yy * self.w + xx) * 3
                    self.px[i : i + 3] = bytes(rgb)

    def line(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), rgb, 2)

    def text(self, x: int, y: int, s: str, rgb: tuple[int, int, int] = (0, 0, 0)) -> None:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    self.dot(x + (i % 3) * 2, y + (i // 3) * 2, rgb, 2)
            x += 8

    def png(self) -> bytes:
        row = self.w * 3
        raw = b"".join(b"\x00" + self.px[y * row : (y + 1) * row] for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            crc = zlib.crc32(kind + data)
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def plot_png(cold: Sequence[dict[str, Any]]) -> bytes:
    """Cold probe and floor latency against cluster size, both axes logarithmic (ms,
    volumes), so small and big clusters are both readable."""
    c = _Canvas(720, 440)
    left, right, top, bottom = 80, 690, 40, 380
    points = sorted(cold, key=lambda r: r["volumes"])
    xs = [r["volumes"] for r in points]
    ys = [r[k] * 1000 for r in points for k in ("probe_s", "floor_s")]
    x0, x1 = math.log10(max(1, min(xs))), math.log10(max(xs))
    y0, y1 = math.log10(max(min(ys), 0.1) / 1.5), math.log10(max(ys) * 1.5)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def xy(volumes: float, ms: float) -> tuple[int, int]:
        x = left + (math.log10(volumes) - x0) / (x1 - x0) * (right - left)
        y = bottom - (math.log10(max(ms, 10**y0)) - y0) / (y1 - y0) * (bottom - top)
        return round(x), round(y)

    def ticks(lo: float, hi: float) -> list[float]:
        return [
            m * 10**d
            for d in range(math.floor(lo), math.ceil(hi) + 1)
            for m in (1, 2, 5)
            if lo - 1e-9 <= math.log10(m * 10**d) <= hi + 1e-9
        ]

    grey = (205, 205, 205)
    for ms in ticks(y0, y1):
        _, y = xy(xs[0], ms)
        c.line(left, y, right, y, grey)
        c.text(8, y - 5, f"{ms:g} MS")
    for v in ticks(x0, x1):
        x, _ = xy(v, 10**y0)
        c.line(x, bottom, x, bottom + 6, (0, 0, 0))
        c.text(min(x - 8, right - 8 * len(str(v))), bottom + 12, str(v))
    c.line(left, bottom, right, bottom, (0, 0, 0))
    c.line(left, top, left, bottom, (0, 0, 0))
    c.text(left, 12, "COLD PROBE AND UPSTREAM FLOOR BY CLUSTER SIZE")
    c.text(right - 230, bottom + 34, "VOLUMES PER CLUSTER")
    for key, rgb, label, ly in (
        ("probe_s", (30, 90, 200), "COLD PROBE", 56),
        ("floor_s", (220, 110, 20), "FLOOR (BARE CLIENT)", 76),
    ):
        prev = None
        for r in points:
            p = xy(r["volumes"], r[key] * 1000)
            if prev:
                c.line(*prev, *p, rgb)
            c.dot(p[0] - 3, p[1] - 3, rgb, 7)
            prev = p
        c.dot(left + 20, ly, rgb, 7)
        c.text(left + 34, ly, label, rgb)
    return c.png()
