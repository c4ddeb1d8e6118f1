"""The pages people read: the fleet overview (``/``), one cluster's triage page
(``/clusters/NAME``), and the same data as JSON (``/api/clusters``, ``/api/clusters/NAME``)
for scripts and ``fleet-exporter triage``.

The pages only read what probes already fetched: opening them never calls a cluster, so a
status page left open on many screens costs nothing upstream and cannot be used to make
the exporter hammer an API server. Everything a cluster sends is untrusted text: the HTML
is built with :func:`render`, which escapes every value that is not explicitly ``Html``,
the overview's JavaScript writes only ``textContent``, and a Content-Security-Policy of
``default-src 'self'`` with no inline script backs both up. No credential is ever read
here; error texts were redacted where they were made.

Status of a cluster, first match wins:

- ``broken``: its kubeconfig did not load (the reason is ``last_error``);
- ``up``: the latest refresh succeeded (or, once its TTL is over and no refresh runs, the
  last probe succeeded and its data is younger than ``max_staleness``);
- ``down``: the latest refresh failed (or, past its TTL, the last probe failed), or a
  refresh is running for a cluster that has no good data;
- ``stale``: a refresh is running past the cache TTL, so probes are served older data
  (until ``max_staleness``); or the last probe succeeded but so long ago that even that
  data has expired (nothing probes this cluster any more);
- ``unprobed``: not probed since the exporter started ("not probed yet").

``health`` ranks what needs a person: ``critical`` (down, broken, a faulted volume),
``warning`` (stale, unhealthy volumes, missing replicas, nodes or disks in trouble, failing
or overdue backups, resources that did not list), ``unknown`` (not probed yet) or ``ok``.
``severity`` is one integer, higher is worse, that orders clusters worst first.

JSON (keys are stable; times are Unix seconds, durations seconds, absent values null):

- ``GET /api/clusters``: ``{"generated_at", "clusters": [ROW...], "by_status": {status: n},
  "by_health": {health: n}, "problems": [ENTRY...], "ignored": [ENTRY...]}`` with rows
  worst first. ``problems`` are what in the clusters directory cannot be served (a file with
  an invalid or duplicate cluster name, a fleet.yaml entry without a kubeconfig), ``ignored``
  the files named like kubeconfigs that are not read on purpose (backups, examples, hidden
  files); an ENTRY is ``{"what", "reason", "message"}`` (``config.NotServed``). A ROW has
  ``name``, ``labels``,
  ``status``, ``status_text``, ``health``, ``severity``, ``refreshing`` (a refresh is
  running now), ``data_time`` and ``data_age_seconds`` (of the data the counts come from),
  ``last_refresh`` (``{ok, started_at, finished_at, duration_seconds, error}`` of the
  newest refresh known), ``last_probe`` (``{id, time, duration_seconds, success, source,
  error}``), ``last_error`` (one line), ``incomplete`` (resources that did not list
  completely) and ``summary`` (``longhorn.ClusterSummary`` as a mapping, or null).
- ``GET /api/clusters/NAME``: a ROW plus ``settings`` (``cache_ttl``, ``max_staleness``),
  ``triage`` (``longhorn.triage.triage()``, or null without data), ``resources``
  (per resource: ``ok, objects, malformed, pages, seconds, error``) and ``history`` (recent
  probes, newest first, each a ``last_probe`` object plus ``timeout_seconds`` and ``log``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import string
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..config import CLUSTER_NAME, NotServed
from ..fleet import FLEET, ClusterRuntime, Fleet
from ..history import ProbeRecord
from ..longhorn.health import summarize
from ..longhorn.triage import triage
from ..longhorn.wire import parse_time
from ..prober import Refresh
from ..units import DASH, ago, utc

STATUS_TEXT = {
    "up": "up",
    "stale": "stale",
    "down": "down",
    "broken": "broken config",
    "unprobed": "not probed yet",
}
HEALTH_TIER = {"critical": 3, "warning": 2, "unknown": 1, "ok": 0}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
ERROR_CHARS = 300  # a one-line error in the overview; the triage page has the full text
WEB = resources.files(__package__)


# --------------------------------------------------------------------------- data


class _Derived:
    """Summary and triage dicts computed once per refresh, not once per page view: the
    overview of 500 clusters is fetched every few seconds by every open tab."""

    def __init__(self) -> None:
        self._summary: weakref.WeakKeyDictionary[Refresh, dict[str, Any] | None] = (
            weakref.WeakKeyDictionary()
        )
        self._triage: weakref.WeakKeyDictionary[Refresh, dict[str, Any] | None] = (
            weakref.WeakKeyDictionary()
        )

    def summary(self, refresh: Refresh | None) -> dict[str, Any] | None:
        if refresh is None or refresh.state is None:
            return None
        if refresh not in self._summary:
            s = summarize(refresh.state)
            self._summary[refresh] = dataclasses.asdict(s)
        return self._summary[refresh]

    def triage(self, refresh: Refresh | None) -> dict[str, Any] | None:
        if refresh is None or refresh.state is None:
            return None
        if refresh not in self._triage:
            self._triage[refresh] = triage(refresh.state)
        return self._triage[refresh]


DERIVED = web.AppKey("pages_derived", _Derived)


def one_line(text: str | None, limit: int = ERROR_CHARS) -> str | None:
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refresh_info(r: Refresh | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "ok": r.ok,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration_seconds": round(r.duration, 4),
        "error": r.error,
    }


def _probe_info(p: ProbeRecord | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "id": p.id,
        "time": p.time,
        "duration_seconds": round(p.duration, 4),
        "success": p.success,
        "source": p.source,
        "error": p.error,
    }


def _status(
    rt: ClusterRuntime,
    latest: Refresh | None,
    good: Refresh | None,
    refreshing: bool,
    last_probe: ProbeRecord | None,
) -> str:
    """See the module docstring. The cache forgets a result when its TTL ends, and
    Prometheus usually scrapes a little less often than that, so between scrapes the
    outcome of the last probe stands in for the expired result: a cluster does not flap
    to stale in the gap."""
    if rt.load_error is not None:
        return "broken"
    if latest is not None:
        return "up" if latest.ok else "down"
    if refreshing:  # past the TTL and the refresh is not back yet
        if good is not None:
            return "stale"
        return "down" if last_probe is not None else "unprobed"
    if last_probe is None:
        return "unprobed"
    if not last_probe.success:
        return "down"
    return "up" if good is not None else "stale"


def _health(status: str, summary: dict[str, Any] | None, incomplete: list[str]) -> tuple[str, int]:
    """(health, severity). The score inside a tier weighs what hurts most first: a
    faulted volume, then a lost node, degraded volumes, missing replicas, backups."""
    s = summary or {}

    def n(key: str) -> int:
        return int(s.get(key) or 0)

    rob = s.get("volumes_by_robustness") or {}
    faulted, degraded = int(rob.get("faulted", 0)), int(rob.get("degraded", 0))
    score = (
        faulted * 1000
        + n("nodes_not_ready") * 200
        + degraded * 100
        + n("replicas_missing") * 20
        + max(n("volumes_unhealthy") - faulted - degraded, 0) * 20
        + n("backups_failing") * 10
        + n("disks_with_trouble") * 10
        + n("backups_overdue") * 2
        + len(incomplete) * 5
    )
    if status in ("down", "broken"):
        health, score = "critical", score + (500 if status == "down" else 400)
    elif faulted:
        health = "critical"
    elif status == "stale" or score:
        health = "warning"
    elif status == "unprobed":
        health = "unknown"
    else:
        health = "ok"
    return health, HEALTH_TIER[health] * 1_000_000 + min(score, 999_999)


def cluster_row(fleet: Fleet, rt: ClusterRuntime, derived: _Derived) -> dict[str, Any]:
    """One cluster as the overview shows it (see the module docstring for the keys)."""
    name = rt.name
    latest, good = fleet.cache.latest(name), fleet.cache.last_good(name)
    records = rt.history.records()
    last_probe = records[0] if records else None
    refreshing = fleet.cache.refreshing(name)
    status = _status(rt, latest, good, refreshing, last_probe)
    data = latest if latest is not None and latest.ok else good
    newest = latest or good
    summary = derived.summary(data)
    incomplete = sorted(r for r, res in data.resources.items() if not res.ok) if data else []
    health, severity = _health(status, summary, incomplete)
    if status == "broken":
        error = rt.load_error
    elif newest is not None and newest.error:
        error = newest.error
    else:
        error = next((p.error for p in records if p.error), None) if status == "down" else None
    return {
        "name": name,
        "labels": dict(rt.config.labels),
        "status": status,
        "status_text": STATUS_TEXT[status],
        "health": health,
        "severity": severity,
        "refreshing": refreshing,
        "data_time": data.finished_at if data else None,
        "data_age_seconds": round(data.age(), 3) if data else None,
        "last_refresh": _refresh_info(newest),
        "last_probe": _probe_info(last_probe),
        "last_error": one_line(error),
        "incomplete": incomplete,
        "summary": summary,
    }


def cluster_detail(fleet: Fleet, rt: ClusterRuntime, derived: _Derived) -> dict[str, Any]:
    """Everything the triage page shows about one cluster."""
    row = cluster_row(fleet, rt, derived)
    latest, good = fleet.cache.latest(rt.name), fleet.cache.last_good(rt.name)
    data = latest if latest is not None and latest.ok else good
    newest = latest or good
    s = rt.config.settings
    row["settings"] = {"cache_ttl": s.cache_ttl, "max_staleness": s.max_staleness}
    row["triage"] = derived.triage(data)
    row["resources"] = {
        r: dataclasses.asdict(res)
        for r, res in sorted((newest.resources if newest else {}).items())
    }
    row["history"] = [
        {**(_probe_info(p) or {}), "timeout_seconds": p.timeout, "log": p.log}
        for p in rt.history.records()
    ]
    return row


def fleet_overview(fleet: Fleet, derived: _Derived) -> dict[str, Any]:
    rows = [cluster_row(fleet, rt, derived) for rt in list(fleet.clusters.values())]
    rows.sort(key=lambda r: (-r["severity"], r["name"]))
    config = fleet.config
    return {
        "generated_at": time.time(),
        "clusters": rows,
        "by_status": dict(Counter(r["status"] for r in rows)),
        "by_health": dict(Counter(r["health"] for r in rows)),
        "problems": _entries(config.rejected if config else {}),
        "ignored": _entries(config.ignored if config else {}),
    }


def _entries(entries: Mapping[str, NotServed]) -> list[dict[str, str]]:
    return [{"what": w, "reason": n.reason, "message": n.message} for w, n in entries.items()]


# --------------------------------------------------------------------------- HTML


class Html(str):
    """Markup that is already safe. Every other value given to :func:`render` or
    :func:`el` is escaped."""


def esc(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in parts))


def el(tag: str, *content: Any, **attrs: Any) -> Html:
    """``<tag attrs>content</tag>``. Attribute names come from code (``class_`` for
    ``class``); their values and the content are escaped unless ``Html``. ``None`` or
    ``False`` drops an attribute, ``True`` writes it bare."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        rendered.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    return Html(f"<{tag}{''.join(rendered)}>{join(content)}</{tag}>")


@cache
def _template(name: str) -> string.Template:
    return string.Template((WEB / "templates" / name).read_text(encoding="utf-8"))


def render(template: str, /, **values: Any) -> str:
    """Fill a template in ``web/templates``. Strict: a missing value is a KeyError, and
    every value that is not ``Html`` is escaped."""
    return _template(template).substitute({k: esc(v) for k, v in values.items()})


@cache
def _static_version() -> str:
    """Changes when any static file changes, so browsers never run an old script
    against a new API (URLs carry ``?v=``)."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted((WEB / "static").iterdir(), key=lambda p: p.name):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def when(t: float | None, now: float) -> Html:
    """An age with the absolute UTC time as its tooltip."""
    if t is None:
        return el("span", "never", class_="dim")
    return el("time", ago(now - t) + " ago", datetime=utc(t).replace(" ", "T"), title=utc(t))


def _count(value: int | None, bad: str = "warn", title: str | None = None) -> Html:
    if value is None:
        return el("span", "?", class_="dim", title=title or "resource did not list completely")
    return el("span", str(value), class_=bad if value else "zero")


def _summary_strip(row: dict[str, Any]) -> Html:
    s = row["summary"]
    if s is None:
        return Html("")
    rob = s["volumes_by_robustness"]
    items = [
        ("Volumes", el("span", str(s["volumes"]))),
        ("Healthy", el("span", str(rob.get("healthy", 0)), class_="good")),
        ("Degraded", _count(rob.get("degraded", 0))),
        ("Faulted", _count(rob.get("faulted", 0), "crit")),
        ("Unknown", _count(rob.get("unknown", 0), "plain")),
        ("Replicas missing", _count(s["replicas_missing"])),
        ("Backups failing", _count(s["backups_failing"], "crit")),
        ("Backups overdue", _count(s["backups_overdue"])),
        ("Never backed up", _count(s["volumes_never_backed_up"], "plain")),
        (
            "Nodes not ready",
            join([_count(s["nodes_not_ready"], "crit"), f"/{s['nodes']}"]),
        ),
        ("Disks in trouble", _count(s["disks_with_trouble"])),
    ]
    return el(
        "dl",
        *(join([el("dt", label), el("dd", value)]) for label, value in items),
        class_="strip",
    )


def _flag(ok: bool, good: str, bad: str) -> Html:
    return el("span", good, class_="good") if ok else el("span", bad, class_="crit")


def _table(headers: list[str], rows: list[Html], empty: str, **attrs: Any) -> Html:
    if not rows:
        return el("p", empty, class_="none")
    head = el("thead", el("tr", *(el("th", h) for h in headers)))
    return el("table", head, el("tbody", *rows), **attrs)


def _conditions(conds: list[dict[str, str]]) -> Html:
    return join(
        el(
            "div",
            el("b", c["type"]),
            f" {c['status']}",
            f" · {c['reason']}" if c["reason"] else "",
            el("span", f" {c['message']}", class_="msg") if c["message"] else "",
            class_="cond",
        )
        for c in conds
    )


_ROBUSTNESS_ORDER = {"faulted": 0, "degraded": 1, "unknown": 2, "healthy": 3}


def _volumes_section(triage: dict[str, Any], now: float) -> Html:
    volumes = sorted(
        triage["volumes"], key=lambda v: (_ROBUSTNESS_ORDER.get(v["robustness"], 9), v["name"])
    )
    down = {n["name"] for n in triage["nodes"] if not n["ready"]}
    rows = []
    for v in volumes:
        desired, healthy = v["replicas_desired"], v["replicas_healthy"]
        replicas = f"{'?' if healthy is None else healthy}/{desired}"
        lb = v["last_backup"]
        backup: list[Any] = []
        if lb is not None:
            cls = {"Completed": "good", "Error": "crit"}.get(lb["state"], "warn")
            backup = [el("span", lb["state"], class_=cls), " ", when(lb["time"], now)]
            if lb["error"]:
                backup.append(el("div", lb["error"], class_="msg"))
        else:
            backup = [el("span", "no backup", class_="dim")]
        if v["last_successful_backup"] is not None and (lb is None or lb["state"] != "Completed"):
            backup += [el("div", "last good ", when(v["last_successful_backup"], now))]
        pvc = f"{v['pvc_namespace']}/{v['pvc']}" if v["pvc"] else ""
        rows.append(
            el(
                "tr",
                el("td", el("span", v["robustness"], class_=f"badge rob-{v['robustness']}")),
                el("td", el("span", v["name"], class_="name"), el("div", pvc, class_="msg")),
                el("td", v["state"]),
                el("td", replicas, class_="num"),
                el("td", _progress(v["rebuild_progress"])),
                el("td", v["attached_node"] or v["owner_node"] or DASH),
                el("td", *backup),
                el("td", _conditions([c for c in v["conditions"] if _bad_condition(c)])),
                class_=f"vol rob-{v['robustness']}",
            )
        )
        rows.extend(_replica_row(r, now, down) for r in v["replicas"])
    return _table(
        [
            "Robustness",
            "Volume / PVC",
            "State",
            "Replicas",
            "Rebuild",
            "Node",
            "Last backup",
            "Why",
        ],
        rows,
        "Every volume is healthy.",
        class_="triage",
        id="volumes",
    )


def _bad_condition(c: dict[str, str]) -> bool:
    """Volume conditions worth showing: ``Scheduled`` is good when True; the others
    (``TooManySnapshots``, ``Restore``, ``OfflineRebuilding``, ...) say that the situation
    is present when True; a ``...Failure`` reason is shown whatever the status."""
    if c["type"] == "Scheduled":
        return c["status"] != "True"
    return c["status"] == "True" or c["reason"].endswith("Failure")


def _progress(p: float | None) -> Html:
    if p is None:
        return Html("")
    pct = round(p * 100)
    return join([el("progress", f"{pct}%", value=f"{p:.3f}", max="1"), f" {pct}%"])


def _replica_row(r: dict[str, Any], now: float, down_nodes: set[str]) -> Html:
    failed = parse_time(r["failed_at"]) if r["failed_at"] else None
    health = r["health"] or "stopped"
    cls = {"healthy": "good", "rebuilding": "warn", "failed": "crit", "unscheduled": "crit"}
    return el(
        "tr",
        el("td", el("span", health, class_=cls.get(health, "dim"))),
        el("td", "↳ ", el("span", r["name"], class_="name"), class_="sub"),
        el("td", r["state"] or DASH),
        el("td", r["mode"] or DASH, class_="num", title="mode in the engine's replica map"),
        el("td", _progress(r["rebuild_progress"])),
        el(
            "td",
            r["node"] or "unscheduled",
            class_="crit" if not r["node"] or r["node"] in down_nodes else None,
            title="node not ready" if r["node"] in down_nodes else None,
        ),
        el(
            "td",
            join(["failed ", when(failed, now)]) if failed is not None else "",
            "" if r["active"] else el("span", " inactive", class_="dim"),
        ),
        el("td", ""),
        class_="replica",
    )


def _nodes_section(triage: dict[str, Any]) -> Html:
    rows = []
    for n in triage["nodes"]:
        disks = join(
            el(
                "div",
                el("span", d["name"], class_="name"),
                f" {d['path']} ",
                _conditions([c for c in d["conditions"] if c["status"] != "True"]),
                class_="disk",
            )
            for d in n["disks"]
        )
        rows.append(
            el(
                "tr",
                el("td", el("span", n["name"], class_="name")),
                el("td", _flag(n["ready"], "ready", "NOT READY")),
                el("td", "yes" if n["allow_scheduling"] else el("span", "disabled", class_="warn")),
                el("td", _conditions(n["conditions"])),
                el("td", disks),
            )
        )
    return _table(
        ["Node", "Ready", "Scheduling", "Conditions not true", "Disks in trouble"],
        rows,
        "All nodes and disks are fine.",
        id="nodes",
    )


def _targets_section(triage: dict[str, Any], now: float) -> Html:
    rows = [
        el(
            "tr",
            el("td", el("span", t["name"], class_="name")),
            el("td", _flag(t["available"], "available", "UNAVAILABLE")),
            el("td", when(t["last_synced"], now)),
            el("td", t["poll_interval"] or DASH),
            el("td", _conditions([c for c in t["conditions"] if c["status"] == "True"])),
        )
        for t in triage["backup_targets"]
    ]
    return _table(
        ["Backup target", "Status", "Last synced", "Poll interval", "Conditions"],
        rows,
        "No backup target listed.",
        id="targets",
    )


def _jobs_section(triage: dict[str, Any]) -> Html:
    rows = [
        el(
            "tr",
            el("td", el("span", j["name"], class_="name")),
            el("td", j["task"]),
            el("td", el("code", j["cron"])),
            el("td", ", ".join(j["groups"]) or DASH),
            el("td", str(j["retain"]), class_="num"),
            el("td", str(j["concurrency"]), class_="num"),
            el("td", f"{j['executions']:g}", class_="num"),
        )
        for j in triage["recurring_jobs"]
    ]
    return _table(
        ["Recurring job", "Task", "Cron", "Groups", "Retain", "Concurrency", "Runs"],
        rows,
        "No recurring jobs.",
        id="jobs",
    )


def _resources_section(res: dict[str, dict[str, Any]]) -> Html:
    rows = [
        el(
            "tr",
            el("td", name),
            el("td", _flag(r["ok"], "ok", "FAILED")),
            el("td", str(r["objects"]), class_="num"),
            el("td", str(r["pages"]), class_="num"),
            el("td", f"{r['seconds']:.3f}s", class_="num"),
            el("td", r["error"] or ("" if not r["malformed"] else f"{r['malformed']} malformed")),
        )
        for name, r in res.items()
    ]
    return _table(
        ["Resource", "Listed", "Objects", "Pages", "Took", "Error"],
        rows,
        "No refresh yet.",
        id="resources",
    )


def _history_section(history: list[dict[str, Any]], now: float) -> Html:
    if not history:
        return el("p", "No probe since the exporter started.", class_="none")
    items = []
    for i, p in enumerate(history):
        ok = p["success"]
        summary = el(
            "summary",
            el("span", utc(p["time"]), class_="t"),
            el("span", ago(now - p["time"]) + " ago", class_="dim"),
            el("span", f"{p['duration_seconds']:.3f}s", class_="num"),
            el("span", "success" if ok else "FAILURE", class_="good" if ok else "crit"),
            el("span", p["source"], class_="dim", title="cache: hit, miss, stale or timeout"),
            el("span", one_line(p["error"]) or "", class_="msg"),
        )
        # The newest failure opens by itself: at 3 a.m. that is the log people want.
        first_failure = not ok and all(q["success"] for q in history[:i])
        items.append(
            el(
                "details",
                summary,
                el("pre", p["log"]),
                open=first_failure,
                class_="probe " + ("ok" if ok else "failed"),
            )
        )
    return join(items)


def _notices(detail: dict[str, Any], now: float) -> Html:
    """Why the data below may not be what it seems, in words."""
    settings, probe = detail["settings"], detail["last_probe"]
    out = []
    if detail["status"] == "stale" and detail["refreshing"]:
        out.append(
            f"A refresh is running past the cache TTL ({ago(settings['cache_ttl'])}): probes "
            f"get this data, {ago(detail['data_age_seconds'])} old, until it is older than "
            f"{ago(settings['max_staleness'])}."
        )
    elif detail["triage"] is not None and detail["status"] == "down":
        out.append(
            "The latest refresh failed; below is the last good data, "
            f"{ago(detail['data_age_seconds'])} old."
        )
    if probe is not None and now - probe["time"] > max(4 * settings["cache_ttl"], 120):
        out.append(
            f"No probe for {ago(now - probe['time'])}: is Prometheus still scraping this cluster?"
        )
    if detail["triage"] is not None and detail["triage"]["incomplete"]:
        out.append(
            "Not listed completely, so missing below: " + ", ".join(detail["triage"]["incomplete"])
        )
    return join(el("p", text, class_="notice warn") for text in out)


def _triage_body(triage: dict[str, Any], now: float) -> Html:
    settings = join(el("span", f"{k} = {v}", class_="label") for k, v in triage["settings"].items())
    return join(
        [
            el("h2", f"Nodes and disks in trouble ({len(triage['nodes'])})", id="nodes-h"),
            _nodes_section(triage),
            el("h2", f"Volumes not healthy ({len(triage['volumes'])})", id="volumes-h"),
            _volumes_section(triage, now),
            el("h2", "Backup targets", id="targets-h"),
            _targets_section(triage, now),
            el("h2", f"Recurring jobs ({len(triage['recurring_jobs'])})", id="jobs-h"),
            _jobs_section(triage),
            el("h2", "Longhorn settings"),
            el("p", settings, class_="labels"),
        ]
    )


def cluster_page(detail: dict[str, Any], now: float) -> str:
    """The triage page for one cluster, from :func:`cluster_detail`."""
    triage, name, last = detail["triage"], detail["name"], detail["last_refresh"]
    if triage is None:
        why = ": not probed yet." if detail["status"] == "unprobed" else "."
        body = el("p", "No Longhorn data for this cluster" + why, class_="none")
    else:
        body = _triage_body(triage, now)
    if detail["data_time"] is not None and last:
        refreshed = join(
            [
                "data from ",
                when(detail["data_time"], now),
                f" · last refresh took {last['duration_seconds']:.2f}s",
                " · refreshing now" if detail["refreshing"] else "",
            ]
        )
    else:
        refreshed = Html("no data; the last refresh failed" if last else "no data yet")
    summary = detail["summary"] or {}
    error = detail["last_error"]
    return render(
        "cluster.html",
        name=name,
        static=Html("../static"),
        v=_static_version(),
        status=el(
            "span",
            detail["status_text"],
            class_=f"badge st-{detail['status']} h-{detail['health']}",
            id="status",
        ),
        health=detail["health"],
        labels=join(el("span", f"{k}={v}", class_="label") for k, v in detail["labels"].items()),
        version=summary.get("longhorn_version") or "version unknown",
        refreshed=refreshed,
        error=el("p", error, class_="error", id="last-error") if error else Html(""),
        notice=_notices(detail, now),
        strip=_summary_strip(detail),
        body=body,
        resources=_resources_section(detail["resources"]),
        history_count=str(len(detail["history"])),
        history=_history_section(detail["history"], now),
        probe_link=f"../probe?cluster={name}&debug=true",
        api_link=f"../api/clusters/{name}",
        generated=utc(now),
    )


# --------------------------------------------------------------------------- handlers


def _runtime(request: web.Request) -> ClusterRuntime:
    name = request.match_info["name"]
    rt = request.app[FLEET].clusters.get(name) if CLUSTER_NAME.fullmatch(name) else None
    if rt is None:
        what = repr(name) if CLUSTER_NAME.fullmatch(name) else "(not a valid cluster name)"
        raise web.HTTPNotFound(
            text=f"unknown cluster {what}: not configured in this exporter\n",
            content_type="text/plain",
        )
    return rt


def _page(text: str) -> web.Response:
    response = web.Response(text=text, content_type="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _json(request: web.Request, data: Any) -> web.Response:
    response = web.json_response(data, dumps=_dumps)
    response.headers["Cache-Control"] = "no-store"
    response.enable_compression()  # only when the client accepts it; 500 rows is ~300 KB
    return response


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


async def handle_overview(request: web.Request) -> web.Response:
    return _page(render("overview.html", static=Html("static"), v=_static_version()))


async def handle_cluster(request: web.Request) -> web.Response:
    rt = _runtime(request)
    detail = cluster_detail(request.app[FLEET], rt, request.app[DERIVED])
    return _page(cluster_page(detail, time.time()))


async def handle_api_clusters(request: web.Request) -> web.Response:
    return _json(request, fleet_overview(request.app[FLEET], request.app[DERIVED]))


async def handle_api_cluster(request: web.Request) -> web.Response:
    rt = _runtime(request)
    return _json(request, cluster_detail(request.app[FLEET], rt, request.app[DERIVED]))


async def handle_static(request: web.Request) -> web.Response:
    """Package data served from memory: a fixed set of files, so no path from the URL
    ever reaches the file system."""
    found = _static_files().get(request.match_info["file"])
    if found is None:
        raise web.HTTPNotFound(text="no such file\n", content_type="text/plain")
    body, content_type = found
    response = web.Response(body=body, content_type=content_type)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@cache
def _static_files() -> dict[str, tuple[bytes, str]]:
    files = {}
    for f in (WEB / "static").iterdir():
        suffix = Path(f.name).suffix
        if suffix in _TYPES:
            files[f.name] = (f.read_bytes(), _TYPES[suffix])
    return files


def setup(app: web.Application) -> None:
    """Register the pages, the JSON API and the static files on the exporter's app."""
    app[DERIVED] = _Derived()
    app.router.add_get("/", handle_overview)
    app.router.add_get("/clusters/{name}", handle_cluster)
    app.router.add_get("/api/clusters", handle_api_clusters)
    app.router.add_get("/api/clusters/{name}", handle_api_cluster)
    app.router.add_get("/static/{file}", handle_static)
