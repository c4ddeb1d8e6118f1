"""``fleet-exporter triage [CLUSTER]``: the triage page in a terminal.

It asks the running exporter (``--url``, default http://localhost:9265) for
``/api/clusters/CLUSTER``, or ``/api/clusters`` without a cluster, so it shows exactly
what the pages show and never talks to a cluster itself. Tables are plain text; colour
only when stdout is a terminal (``--color`` overrides, ``NO_COLOR`` is honoured). The width
is ``$COLUMNS``, else the terminal's, else 160, so a pipe can be told its width too.

Cluster data is untrusted even here: control characters in names and messages (newlines,
escape sequences that would drive the terminal) are shown as ``\\n``, ``\\x1b`` and so on.

Exit status: 0 nothing needs a person; 1 the cluster (or some cluster) is in ``warning``
or ``critical`` health; 2 the exporter could not be asked or does not know the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from .longhorn.wire import parse_time
from .units import DASH, ago, size, utc, with_sizes

DEFAULT_URL = "http://localhost:9265"
MAX_CELL = 60  # a column never gets wider than this; the last column takes what is left


class TriageError(Exception):
    """The exporter could not be asked, or said no. One line, for the user."""


def fetch(url: str, path: str, timeout: float) -> Any:
    """GET ``url`` + ``path`` and decode the JSON."""
    full = url.rstrip("/") + path
    request = urllib.request.Request(full, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.load(response)
    except urllib.error.HTTPError as e:
        body = e.read(300).decode("utf-8", "replace").strip()
        raise TriageError(f"{full}: HTTP {e.code}: {clean(body)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TriageError(f"cannot reach the exporter at {url}: {reason}") from None
    except ValueError:
        raise TriageError(f"{full}: the answer is not JSON") from None


# --------------------------------------------------------------------------- text


def clean(text: Any) -> str:
    """Text safe for a terminal: control and format characters become escapes."""
    s = DASH if text is None else str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch.isprintable():
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def width(text: str) -> int:
    """Columns ``text`` takes in a terminal (wide East Asian characters and emoji take 2;
    combining marks none)."""
    w = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        w += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return w


def cut(text: str, limit: int) -> str:
    if width(text) <= limit:
        return text
    out, w = [], 0
    for ch in text:
        cw = width(ch)
        if w + cw > limit - 1:
            break
        out.append(ch)
        w += cw
    return "".join(out) + "…"


class Style:
    """ANSI colours, or nothing."""

    CODES = {"red": "31;1", "yellow": "33;1", "green": "32", "dim": "2", "bold": "1"}

    def __init__(self, color: bool):
        self.color = color

    def __call__(self, text: str, style: str | None) -> str:
        if not self.color or not style:
            return text
        return f"\x1b[{self.CODES[style]}m{text}\x1b[0m"


Cell = tuple[str, str | None]  # (clean text, style)


def cell(value: Any, style: str | None = None) -> Cell:
    return clean(value), style


def table(
    st: Style,
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    total: int,
    right: Sequence[int] = (),
    keep: Sequence[int] = (),
) -> list[str]:
    """Aligned columns. ``right`` holds indexes of right-aligned (numeric) columns. Cells
    are cut at MAX_CELL; when the table is wider than ``total`` the widest columns give
    way first, down to their header's width."""
    if not rows:
        return []
    n = len(headers)
    widths = [
        min(max(width(h), *(width(r[i][0]) for r in rows)), MAX_CELL) for i, h in enumerate(headers)
    ]
    # Too wide for ``total``: take a column at a time from the widest, the columns in
    # ``keep`` last, never below the header nor below 8 (a header cut to "LAST BACK…", a
    # health cut to "criti…", say nothing).
    floors = [max(width(h), min(w, 8)) for h, w in zip(headers, widths, strict=True)]
    excess = sum(widths) + 2 * (n - 1) - total
    for group in ([k for k in range(n) if k not in keep], list(keep)):
        while excess > 0 and group:
            i = max(group, key=lambda k: widths[k] - floors[k])
            if widths[i] <= floors[i]:
                break
            widths[i] -= 1
            excess -= 1

    def line(cells: Sequence[Cell], header: bool = False) -> str:
        parts = []
        for i, (text, style) in enumerate(cells):
            text = cut(text, widths[i])
            pad = " " * (widths[i] - width(text))
            shown = st(text, "bold" if header else style)
            last = i == n - 1
            parts.append(pad + shown if i in right else shown + ("" if last else pad))
        return "  ".join(parts).rstrip()

    return [line([(h, None) for h in headers], header=True), *(line(r) for r in rows)]


STATUS_STYLE = {"down": "red", "broken": "red", "stale": "yellow", "unprobed": "dim", "up": "green"}
HEALTH_STYLE = {"critical": "red", "warning": "yellow", "unknown": "dim", "ok": "green"}


def _n(value: int | None, bad: str = "yellow") -> Cell:
    if value is None:
        return ("?", "dim")
    return (str(value), bad if value else "dim")


# --------------------------------------------------------------------------- one cluster


def render_cluster(
    d: dict[str, Any], st: Style, now: float, total: int = 120, logs: bool = False
) -> str:
    out: list[str] = []
    add = out.append
    health = d["health"]
    s = d["summary"]
    head = (
        st(clean(d["name"]), "bold")
        + "  "
        + st(d["status_text"].upper(), STATUS_STYLE.get(d["status"]))
        + f" ({st(health, HEALTH_STYLE.get(health))})"
    )
    if s is not None:
        head += f"  Longhorn {clean(s['longhorn_version'] or 'version unknown')}"
    if d["data_time"] is not None:
        head += f"  data {ago(now - d['data_time'])} old"
    if d["last_refresh"]:
        head += f", last refresh took {d['last_refresh']['duration_seconds']:.2f}s"
    if d["refreshing"]:
        head += ", refreshing now"
    add(head)
    if d["labels"]:
        add("labels: " + " ".join(clean(f"{k}={v}") for k, v in d["labels"].items()))
    if d["last_error"]:
        add(st("last error: " + clean(d["last_error"]), "red"))
    if s is not None:
        rob = s["volumes_by_robustness"]
        parts = [
            f"volumes {s['volumes']}",
            f"healthy {s['volumes_healthy']}",
            _pair(st, "not healthy", s["volumes_unhealthy"], "yellow"),
            _pair(st, "degraded", rob.get("degraded", 0), "yellow"),
            _pair(st, "faulted", rob.get("faulted", 0), "red"),
            f"unknown {rob.get('unknown', 0)}",
            _pair(st, "replicas missing", s["replicas_missing"], "yellow"),
            _pair(st, "backups failing", s["backups_failing"], "red"),
            _pair(st, "backups overdue", s["backups_overdue"], "yellow"),
            _pair(st, "never backed up", s["volumes_never_backed_up"], "yellow"),
            st(
                f"nodes not ready {s['nodes_not_ready']}/{s['nodes']}",
                "red" if s["nodes_not_ready"] else None,
            ),
            _pair(st, "disks in trouble", s["disks_with_trouble"], "yellow"),
        ]
        add(" · ".join(parts))
    t = d["triage"]
    if t is None:
        add("")
        add(
            "No Longhorn data"
            + (": not probed yet." if d["status"] == "unprobed" else " for this cluster.")
        )
    else:
        if t["incomplete"]:
            add(st("not listed completely: " + ", ".join(t["incomplete"]), "yellow"))
        _section(out, st, f"NODES AND DISKS IN TROUBLE ({len(t['nodes'])})", _nodes(t, st, total))
        _section(out, st, f"VOLUMES NOT HEALTHY ({len(t['volumes'])})", _volumes(t, st, now, total))
        _backup_sections(out, st, t, now, total)
        _section(out, st, "REPLICAS PER NODE", _node_replicas(t, st, total))
        _section(out, st, "BACKUP TARGETS", _targets(t, st, now, total))
        _section(out, st, f"RECURRING JOBS ({len(t['recurring_jobs'])})", _jobs(t, st, total))
    failed = {r: v for r, v in d["resources"].items() if not v["ok"]}
    if failed:
        rows = [[cell(r), cell(v["error"], "red")] for r, v in failed.items()]
        _section(out, st, "RESOURCES NOT LISTED", table(st, ["RESOURCE", "ERROR"], rows, total))
    history = d["history"]
    rows = [
        [
            cell(utc(p["time"])),
            cell(ago(now - p["time"])),
            cell(f"{p['duration_seconds']:.3f}s"),
            ("success", "green") if p["success"] else ("FAILURE", "red"),
            cell(p["source"], "dim"),
            cell(" ".join((p["error"] or "").split())),
        ]
        for p in history
    ]
    headers = ["TIME", "AGO", "TOOK", "RESULT", "CACHE", "ERROR"]
    _section(
        out,
        st,
        f"RECENT PROBES ({len(history)}, newest first)",
        table(st, headers, rows, total, right=(1, 2)),
    )
    shown = history if logs else [p for p in history[:1] if not p["success"]]
    for p in shown:
        add("")
        add(st(f"--- log of the probe at {utc(p['time'])}", "bold"))
        out.extend(clean(line) for line in p["log"].splitlines())
    if history and not logs:
        add(st("(--logs prints every probe's log)", "dim"))
    return "\n".join(out) + "\n"


def _pair(st: Style, label: str, value: int | None, bad: str | None) -> str:
    if value is None:
        return st(f"{label} ?", "dim")
    return st(f"{label} {value}", bad if value else None)


def _section(out: list[str], st: Style, title: str, lines: list[str]) -> None:
    out.append("")
    out.append(st(title, "bold"))
    out.extend(lines or [st("  none", "dim")])


_ROB_ORDER = {"faulted": 0, "degraded": 1, "unknown": 2, "healthy": 3}
_ROB_STYLE = {"faulted": "red", "degraded": "yellow"}
_REPLICA_STYLE = {"failed": "red", "unscheduled": "red", "rebuilding": "yellow", "healthy": "green"}


def _since(t: float | None, now: float, what: str) -> str:
    return "" if t is None else f"{what} {ago(now - t)} ago"


def _volumes(t: dict[str, Any], st: Style, now: float, total: int) -> list[str]:
    rows: list[list[Cell]] = []
    for v in sorted(t["volumes"], key=lambda v: (_ROB_ORDER.get(v["robustness"], 9), v["name"])):
        healthy = v["replicas_healthy"]
        lb = v["last_backup"]
        backup = cell("no backup", "dim")
        if lb is not None:
            style = {"Completed": None, "Error": "red"}.get(lb["state"], "yellow")
            text = f"{lb['state']} {ago(now - lb['time']) if lb['time'] else DASH} ago"
            if lb["error"]:
                text += f": {lb['error']}"
            backup = cell(text, style)
        progress = v["rebuild_progress"]
        rows.append(
            [
                cell(v["robustness"], _ROB_STYLE.get(v["robustness"])),
                cell(v["name"], "bold"),
                cell(f"{v['pvc_namespace']}/{v['pvc']}" if v["pvc"] else ""),
                cell(v["state"]),
                cell(f"{'?' if healthy is None else healthy}/{v['replicas_desired']}"),
                cell("" if progress is None else f"{progress:.0%}"),
                cell(v["attached_node"] or v["owner_node"]),
                backup,
                cell("; ".join(v["why"]), "red"),
            ]
        )
        for r in v["replicas"]:
            failed = parse_time(r["failed_at"]) if r["failed_at"] else None
            rp = r["rebuild_progress"]
            health = r["health"] or "stopped"
            why = [_since(failed, now, "failed")] if failed else []
            if not r["node"]:
                why.append("not scheduled to a node")
            if not r["active"]:
                why.append("inactive (not counted)")
            rows.append(
                [
                    cell("  " + health, _REPLICA_STYLE.get(health, "dim")),
                    cell("  ↳ " + clean(r["name"])),
                    cell(""),
                    cell(r["state"]),
                    cell(r["mode"] or DASH),
                    cell("" if rp is None else f"{rp:.0%}"),
                    cell(r["node"] or "unscheduled"),
                    cell(""),
                    cell("; ".join(why), "red" if why else None),
                ]
            )
    headers = [
        "HEALTH",
        "VOLUME / REPLICA",
        "PVC",
        "STATE",
        "REPL/MODE",
        "REBUILD",
        "NODE",
        "LAST BACKUP",
        "WHY",
    ]
    return table(st, headers, rows, total, keep=(1, 8))


def _overdue(s: dict[str, Any]) -> int | None:
    """Both cases of LonghornBackupOverdue, as the overview's "Backups overdue" column."""
    a, b = s.get("backups_overdue"), s.get("volumes_never_backed_up")
    return None if a is None or b is None else a + b


def _backup_sections(out: list[str], st: Style, t: dict[str, Any], now: float, total: int) -> None:
    """What the backup counts count, a section each when there is any."""
    sections = (
        ("BACKUPS FAILING", "backups_failing", "FAILED", "failed_at", "ERROR", "red"),
        ("BACKUPS OVERDUE", "backups_overdue", "LAST SUCCESS", "last_success", "ALLOWED", "yellow"),
        ("NEVER BACKED UP", "volumes_never_backed_up", "CREATED", "created", "ALLOWED", "yellow"),
    )
    for title, key, when, field, last, style in sections:
        rows = [
            [
                cell(b["volume"], "bold"),
                cell(b["backup_target"]),
                cell(f"{ago(now - b[field])} ago", style),
                cell(b["error"] if last == "ERROR" else ago(b["allowed"])),
            ]
            for b in t["counted"][key] or []
        ]
        if rows:
            headers = ["VOLUME", "TARGET", when, last]
            _section(out, st, f"{title} ({len(rows)})", table(st, headers, rows, total))


def _node_replicas(t: dict[str, Any], st: Style, total: int) -> list[str]:
    rows = [
        [
            cell(n["node"], "bold"),
            ("ready", "green") if n["ready"] else ("NOT READY", "red"),
            cell(n["healthy"]),
            _n(n["rebuilding"]),
            _n(n["failed"], "red"),
            cell(n["stopped"]),
            cell(", ".join(n["volumes"]) if n["volumes"] is not None else ""),
        ]
        for n in t["node_replicas"] or []
    ]
    headers = ["NODE", "READY", "HEALTHY", "REBUILDING", "FAILED", "STOPPED", "VOLUMES HELD"]
    return table(st, headers, rows, total, right=(2, 3, 4, 5))


def _conds(conds: list[dict[str, str]]) -> str:
    return "; ".join(
        f"{c['type']} {c['status']}"
        + (f" ({c['reason']})" if c["reason"] else "")
        + (f": {with_sizes(c['message'])}" if c["message"] else "")
        for c in conds
    )


def _nodes(t: dict[str, Any], st: Style, total: int) -> list[str]:
    rows: list[list[Cell]] = []
    for n in t["nodes"]:
        rows.append(
            [
                cell(n["name"], "bold"),
                ("ready", "green") if n["ready"] else ("NOT READY", "red"),
                cell("on" if n["allow_scheduling"] else "disabled"),
                cell(_conds(n["conditions"])),
            ]
        )
        for disk in n["disks"]:
            trouble = [c for c in disk["conditions"] if c["status"] != "True"]
            used = None
            if disk["capacity"] is not None and disk["available"] is not None:
                used = disk["capacity"] - disk["available"]
            figures = (
                f"{disk['path']}: used {size(used)} of {size(disk['capacity'])}, "
                f"scheduled {size(disk['scheduled'])}, reserved {size(disk['reserved'])}"
            )
            rows.append(
                [
                    cell(f"  ↳ disk {clean(disk['name'])}"),
                    cell(""),
                    cell(figures),
                    cell(_conds(trouble), "yellow"),
                ]
            )
    return table(st, ["NODE", "READY", "SCHEDULING", "CONDITIONS NOT TRUE"], rows, total)


def _targets(t: dict[str, Any], st: Style, now: float, total: int) -> list[str]:
    rows = [
        [
            cell(b["name"]),
            ("available", "green") if b["available"] else ("UNAVAILABLE", "red"),
            cell(_since(b["last_synced"], now, "synced") or "never synced"),
            cell(b["poll_interval"]),
            cell(_conds([c for c in b["conditions"] if c["status"] == "True"])),
        ]
        for b in t["backup_targets"]
    ]
    return table(st, ["TARGET", "STATUS", "LAST SYNC", "POLL", "CONDITIONS"], rows, total)


def _jobs(t: dict[str, Any], st: Style, total: int) -> list[str]:
    rows = [
        [
            cell(j["name"]),
            cell(j["task"]),
            cell(j["cron"]),
            cell(", ".join(j["groups"])),
            cell(j["retain"]),
            cell(j["concurrency"]),
            cell(f"{j['executions']:g}"),
        ]
        for j in t["recurring_jobs"]
    ]
    headers = ["JOB", "TASK", "CRON", "GROUPS", "RETAIN", "CONCURRENCY", "RUNS"]
    return table(st, headers, rows, total, right=(4, 5, 6))


# --------------------------------------------------------------------------- the fleet


def render_fleet(data: dict[str, Any], st: Style, total: int = 120) -> str:
    rows = []
    for c in data["clusters"]:
        s = c["summary"] or {}
        rob = s.get("volumes_by_robustness") or {}
        has = bool(s)

        def count(key: str, bad: str, get: Callable[[str], Any] = s.get, has: bool = has) -> Cell:
            return _n(get(key), bad) if has else ("", None)

        rows.append(
            [
                cell(c["status_text"], STATUS_STYLE.get(c["status"])),
                cell(c["health"], HEALTH_STYLE.get(c["health"])),
                cell(c["name"], "bold"),
                cell(ago(c["data_age_seconds"]) if c["data_age_seconds"] is not None else DASH),
                cell(s.get("longhorn_version") or ""),
                cell(s.get("volumes", "")),
                count("volumes_unhealthy", "yellow"),
                count("degraded", "yellow", rob.get),
                count("faulted", "red", rob.get),
                count("replicas_missing", "yellow"),
                count("backups_failing", "red"),
                _n(_overdue(s), "yellow") if has else ("", None),
                cell(f"{s['nodes_not_ready']}/{s['nodes']}" if has else "", None),
                cell(c["last_error"] or "", "red"),
            ]
        )
    headers = [
        "STATUS",
        "HEALTH",
        "CLUSTER",
        "AGE",
        "LONGHORN",
        "VOLS",
        "UNHEALTHY",
        "DEGR",
        "FAULT",
        "MISSING",
        "BK FAIL",
        "BK LATE",
        "NODES DOWN",
        "LAST ERROR",
    ]
    lines = table(st, headers, rows, total, right=(3, 5, 6, 7, 8, 9, 10, 11, 12), keep=(2, 13))
    by = data["by_status"]
    head = f"{len(data['clusters'])} clusters: " + ", ".join(
        f"{n} {s}" for s, n in sorted(by.items(), key=lambda kv: -kv[1])
    )
    return "\n".join([head, *lines]) + "\n"


# --------------------------------------------------------------------------- command


DESCRIPTION = (
    "Show one cluster's triage view, or the whole fleet, as a running exporter sees it. "
    "It asks the exporter (/api/clusters/CLUSTER, or /api/clusters), never a cluster. "
    "Colour only on a terminal; the width is $COLUMNS, else the terminal's, else 160. "
    "Exit status: 0 when nothing needs a person, 1 when a cluster is in warning or "
    "critical health, 2 when the exporter cannot be asked or does not know the cluster."
)


def add_subcommand(sub: argparse._SubParsersAction, **kwargs: Any) -> argparse.ArgumentParser:
    """Register ``triage`` on the ``fleet-exporter`` parser (``cli.build_parser``);
    ``kwargs`` go to ``add_parser`` (the shared flags, the help formatter)."""
    p = sub.add_parser(
        "triage",
        help="show one cluster's triage view (or the fleet) from a running exporter",
        description=DESCRIPTION,
        **kwargs,
    )
    p.add_argument(
        "cluster", nargs="?", help="cluster name; without it, the whole fleet (default: none)"
    )
    p.add_argument(
        "--url",
        default=os.environ.get("FLEET_EXPORTER_URL", DEFAULT_URL),
        help="the running exporter to ask; $FLEET_EXPORTER_URL sets the default",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the exporter's answer",
    )
    p.add_argument("--logs", action="store_true", help="print every recent probe's log")
    p.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour: auto is only on a terminal and not when $NO_COLOR is set",
    )
    p.set_defaults(func=cmd_triage)
    return p


def cmd_triage(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    if args.cluster is not None:
        path = "/api/clusters/" + urllib.parse.quote(args.cluster, safe="")
    else:
        path = "/api/clusters"
    try:
        data = fetch(args.url, path, args.timeout)
    except TriageError as e:
        print(f"fleet-exporter triage: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        tty = hasattr(out, "isatty") and out.isatty()
        color = args.color == "always" or (
            args.color == "auto" and tty and not os.environ.get("NO_COLOR")
        )
        # $COLUMNS first, then the terminal, else 160: a pipe can be told its width too.
        total = shutil.get_terminal_size((160, 40)).columns
        st = Style(color)
        if args.cluster is not None:
            out.write(render_cluster(data, st, time.time(), total, args.logs))
        else:
            out.write(render_fleet(data, st, total))
    rows = [data] if args.cluster is not None else data["clusters"]
    return 1 if any(r["health"] in ("warning", "critical") for r in rows) else 0
