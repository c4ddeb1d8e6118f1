"""Durations, times and sizes for people: one way to say them on the pages and in the
terminal."""

from __future__ import annotations

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
