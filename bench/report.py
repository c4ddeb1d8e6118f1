"""The one table: every figure, its target and verdict; and the sizing derived from it."""

from __future__ import annotations

import contextlib
import platform
import statistics
from collections.abc import Sequence
from typing import Any

from .common import TARGETS


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _sizing(fleet: dict[str, Any], many: dict[str, Any] | None) -> dict[str, Any]:
    """Clusters one replica can refresh every 30 s with half a core: the exporter's Python
    work runs on one core (the loop, plus threads that share the GIL), and half leaves room
    for bursts, the HA pair's second scrape and GC."""
    fit = fleet["cpu_fit_per_1000_volumes"]
    per_cluster = max(fit["intercept"], 0.0)
    if many:
        per_cluster = statistics.median(s["cpu_s_per_refresh"] for s in many["spread"])
        small_volumes = many["volumes"] / many["clusters"]
        per_cluster = max(per_cluster - fit["slope"] * small_volumes / 1000, 0.0)
    budget = 15.0  # CPU seconds per 30 s interval: half a core
    table = {}
    for volumes in (20, 100, 500, 2000):
        cpu = per_cluster + fit["slope"] * volumes / 1000
        table[str(volumes)] = {"cpu_s_per_refresh": cpu, "clusters_per_replica": budget / cpu}
    return {
        "cpu_s_per_cluster": per_cluster,
        "cpu_s_per_1000_volumes": fit["slope"],
        "budget_cpu_s_per_30s": budget,
        "by_cluster_volumes": table,
    }


def _row(label: str, value: str, target: str = "", ok: bool | None = None) -> tuple[str, ...]:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    return (label, value, target, verdict)


def _cold_rows(
    cold: Sequence[dict[str, Any]], where: str = "", limit: float | None = None
) -> list[tuple[str, ...]]:
    """One row per cluster size; the biggest carries the target ``limit``, if any."""
    rows = []
    biggest = max(cold, key=lambda x: x["volumes"])
    for r in cold:
        target, ok = "", None
        if r is biggest and limit is not None:
            target, ok = f"<= {limit}x", r["ratio"] <= limit
        rows.append(
            _row(
                f"cold probe, {r['volumes']} volumes{where}",
                f"{r['probe_s'] * 1000:.0f} ms / floor {r['floor_s'] * 1000:.0f} ms = "
                f"{r['ratio']:.2f}x; CPU {r['cpu_s']:.2f} s; decode-only client "
                f"{r['decode_ratio']:.2f}x",
                target,
                ok,
            )
        )
    return rows


def _sweep_rows(run: dict[str, Any], clusters: int, where: str = "") -> list[tuple[str, ...]]:
    sweeps = run["sweeps"]
    sweep = statistics.median(s["seconds"] for s in sweeps)
    ratio = sweep / run["slowest_floor_s"]
    ok = sum(s["ok_in_time"] for s in sweeps)
    total = sum(s["probes"] for s in sweeps)
    return [
        _row(
            f"sweep {clusters} clusters x 2 scrapers{where} (median of {len(sweeps)})",
            f"{sweep:.2f} s / slowest floor {run['slowest_floor_s']:.2f} s = {ratio:.2f}x "
            f"(all-fleet floor {run['fleet_floor_s']:.2f} s)",
        ),
        _row(
            f"sweep probes ok within 10 s{where}",
            f"{ok}/{total}, slowest {max(s['max_probe_s'] for s in sweeps):.2f} s",
            "all",
            ok == total,
        ),
    ]


def _upstream_rows(f: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for u in f.get("upstreams", []):
        where = f", {u['label']} ({u['rtt_s'] * 1000:g} ms + {u['bytes_per_second'] / 1e6:g} MB/s)"
        limit = TARGETS["cold_ratio_1ms"] if u["rtt_s"] == 0.001 else None
        rows += _cold_rows(u["cold"], where, limit)
        rows += _sweep_rows(u, f["clusters"], where)
        stall = max(s["max_stall_ms"] for s in u["sweeps"])
        rows.append(
            _row(
                f"longest loop stall{where}",
                f"{stall:.1f} ms",
                f"<= {TARGETS['stall_ms']:.0f} ms",
                stall <= TARGETS["stall_ms"],
            )
        )
    return rows


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    f = result["fleet"]
    rows = _cold_rows(f["cold"], limit=TARGETS["cold_ratio_loopback"])
    cpu = f["cpu_fit_per_1000_volumes"]
    rows.append(
        _row(
            "CPU per refresh",
            f"{cpu['slope']:.3f} s per 1,000 volumes + {cpu['intercept'] * 1000:.0f} ms "
            f"(R² {cpu['r2']:.3f})",
            f"<= {TARGETS['cpu_per_1000_volumes']} s",
            cpu["slope"] <= TARGETS["cpu_per_1000_volumes"],
        )
    )
    for w in f["warm"]:
        plain = w.get("plain", False)
        limit = TARGETS["warm_plain_p99_ratio" if plain else "warm_p99_ratio"]
        rows.append(
            _row(
                f"warm probe, {w['volumes']} volumes ({w['bytes'] / 1024:.0f} KiB "
                f"{'plain' if plain else 'gz'})",
                f"p50 {w['probe_p50_ms']:.2f} / bare {w['bare_p50_ms']:.2f} ms; "
                f"p99 {w['probe_p99_ms']:.2f} / bare {w['bare_p99_ms']:.2f} ms = "
                f"{w['p99_ratio']:.2f}x",
                f"p99 <= {limit}x",
                w["p99_ratio"] <= limit,
            )
        )
    sweeps = f["sweeps"]
    rows += _sweep_rows(f, f["clusters"])
    sweep_cpu = statistics.median(s["cpu_s"] for s in sweeps)
    rows.append(
        _row(
            "sweep CPU",
            f"{sweep_cpu:.2f} s = {sweep_cpu / f['volumes'] * 1000:.3f} s per 1,000 volumes",
        )
    )
    stall = max(s["max_stall_ms"] for s in sweeps)
    rows.append(
        _row(
            "longest loop stall during sweeps",
            f"{stall:.1f} ms (p99 {max(s['p99_stall_ms'] for s in sweeps):.1f} ms, "
            f"longest GC pause {max(s['max_gc_ms'] for s in sweeps):.1f} ms)",
            f"<= {TARGETS['stall_ms']:.0f} ms",
            stall <= TARGETS["stall_ms"],
        )
    )
    mem = f["rss_fit_per_1000_volumes"]
    rows.append(
        _row(
            f"RSS, {f['clusters']} clusters",
            f"empty {f['empty_rss_mb']:.0f} MB, peak {f['peak_rss_mb']:.0f} MB, "
            f"steady {f['steady_rss_mb']:.0f} MB",
            f"steady <= {TARGETS['steady_rss_mb']:.0f} MB",
            f["steady_rss_mb"] <= TARGETS["steady_rss_mb"],
        )
    )
    rows.append(
        _row(
            "RSS growth while filling",
            f"{mem['slope']:.1f} MB per 1,000 volumes (R² {mem['r2']:.3f})",
        )
    )
    rows += _upstream_rows(f)
    m = result.get("many")
    if m:
        ok = sum(s["ok_in_time"] for s in m["spread"])
        total = sum(s["probes"] for s in m["spread"])
        spread = m["spread"][-1]
        rows.append(
            _row(
                f"{m['clusters']} clusters, 2 scrapers over {spread['interval_s']:g} s",
                f"{ok}/{total} ok, slowest {max(s['max_probe_s'] for s in m['spread']):.2f} s, "
                f"CPU busy {spread['cpu_busy'] * 100:.0f}%, "
                f"stall {max(s['max_stall_ms'] for s in m['spread']):.1f} ms",
                "all served",
                ok == total,
            )
        )
        fit = m["rss_fit_per_cluster"]
        rows.append(
            _row(
                f"RSS, {m['clusters']} clusters",
                f"empty {m['empty_rss_mb']:.0f} MB, peak {m['peak_rss_mb']:.0f} MB, "
                f"steady {m['steady_rss_mb']:.0f} MB; {fit['slope'] * 1000:.0f} kB per "
                f"cluster (R² {fit['r2']:.3f})",
            )
        )
    s = result["sizing"]
    rows.append(
        _row(
            "sizing at 30 s, half a core",
            ", ".join(
                f"{int(v['clusters_per_replica'])} x {k}-volume"
                for k, v in s["by_cluster_volumes"].items()
            ),
        )
    )
    return rows


def format_table(result: dict[str, Any]) -> str:
    rows = [("figure", "measured", "target", ""), *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    m = result["machine"]
    lines = [
        f"machine: {m['summary']}; other processes used {m.get('other_load', 0.0):.2f} cores "
        f"on average during the {result['seconds']:.0f} s run"
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
