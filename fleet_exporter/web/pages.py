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
``severity`` is one integer, higher is worse, that orders clusters worst first. The status
pill says the health in words too (``up · critical``): colour is never the only sign.

Every count is ``longhorn.health``'s, the definition of the metric or alerting rule of the
same meaning; the cluster page opens each count to the objects it counts
(``triage.counted``). The overview is rendered by the server too (worst first), so it says
what matters without JavaScript; overview.js then keeps it current.

JSON (keys are stable; times are Unix seconds, durations seconds, absent values null):

- ``GET /api/clusters``: ``{"generated_at", "clusters": [ROW...], "by_status": {status: n},
  "by_health": {health: n}, "problems": [ENTRY...], "ignored": [ENTRY...]}`` with rows
  worst first. ``problems`` are what in the clusters directory cannot be served (a file with
  an invalid or duplicate cluster name, a fleet.yaml entry without a kubeconfig), ``ignored``
  the files named like kubeconfigs that are not read on purpose (backups, examples, hidden
  files); an ENTRY is ``{"what", "reason", "message"}`` (``config.NotServed``). A ROW has
  ``name``, ``labels``,
  ``status``, ``status_text``, ``status_label`` (with the health: ``up · critical``),
  ``health``, ``severity``, ``refreshing`` (a refresh is running now), ``data_time`` and
  ``data_age_seconds`` (of the data the counts come from), ``last_refresh`` (``{ok,
  started_at, finished_at, duration_seconds, error}`` of the newest refresh known, a failed
  one kept past its TTL until a refresh succeeds), ``last_probe`` (``{id, time,
  duration_seconds, success, source, error}``), ``last_error`` (one line), ``incomplete``
  (resources that did not list completely) and ``summary`` (``longhorn.ClusterSummary`` as
  a mapping, or null).
- ``GET /api/clusters/NAME``: a ROW plus ``settings`` (``cache_ttl``, ``max_staleness``),
  ``triage`` (``longhorn.triage.triage()``, or null without data), ``resources``
  (per resource of the newest refresh, failed or not: ``ok, objects, malformed, pages,
  seconds, error``; ``seconds`` null for a list that never started) and ``history`` (recent
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
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from .. import __version__, units
from ..config import CLUSTER_NAME, NotServed
from ..fleet import ClusterRuntime, Fleet
from ..history import ProbeRecord
from ..longhorn.health import summarize
from ..longhorn.triage import triage
from ..longhorn.wire import parse_time
from ..prober import Refresh
from ..units import DASH, ago, utc
from . import FLEET

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
        + n("volumes_never_backed_up") * 2
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


def status_label(status: str, health: str) -> str:
    """The status in words, with the health when it needs a person, so that severity is
    said in text and not by colour alone: ``up · critical``, ``down · critical``."""
    text = STATUS_TEXT[status]
    return f"{text} · {health}" if health in ("critical", "warning") else text


def cluster_row(fleet: Fleet, rt: ClusterRuntime, derived: _Derived) -> dict[str, Any]:
    """One cluster as the overview shows it (see the module docstring for the keys)."""
    name = rt.name
    latest, good = fleet.cache.latest(name), fleet.cache.last_good(name)
    records = rt.history.records()
    last_probe = records[0] if records else None
    refreshing = fleet.cache.refreshing(name)
    status = _status(rt, latest, good, refreshing, last_probe)
    data = latest if latest is not None and latest.ok else good
    newest = fleet.cache.newest(name)
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
        "status_label": status_label(status, health),
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
    newest = fleet.cache.newest(rt.name)
    s = rt.config.settings
    row["settings"] = {"cache_ttl": s.cache_ttl, "max_staleness": s.max_staleness}
    row["triage"] = derived.triage(data)
    row["resources"] = {
        r: msgspec.structs.asdict(res)
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


def size(n: float | None) -> Html:
    """Bytes in binary units, the exact number on hover."""
    if n is None:
        return el("span", DASH, class_="dim")
    return el("span", units.size(n), title=units.exact_bytes(n), class_="size")


def with_sizes(text: str) -> Html:
    """Text from a cluster with each byte count in it said in binary units, the exact
    number on hover (Longhorn's disk messages say ``Scheduled 4386235351040``)."""
    return join(
        el("span", t, title=units.exact_bytes(n), class_="size") if n is not None else t
        for t, n in units.split_sizes(text)
    )


def _allowed(seconds: float) -> str:
    return f"allowed {ago(seconds)}"


def _counted_items(key: str, items: list[Any], now: float) -> list[Html]:
    """One list item per object a count counts (``triage.counted``)."""
    if key == "replicas_missing":
        return [
            el(
                "li",
                el("span", m["volume"], class_="name"),
                f": {m['missing']} missing, {m['healthy']} of {m['desired']} healthy",
                f", {m['rebuilding']} rebuilding" if m["rebuilding"] else "",
                data_object=m["volume"],
                data_n=str(m["missing"]),
            )
            for m in items
        ]
    if key == "backups_failing":
        return [
            el(
                "li",
                el("span", b["volume"], class_="name"),
                f" → {b['backup_target']}: failed ",
                when(b["failed_at"], now),
                el("div", b["error"], class_="msg") if b["error"] else "",
                data_object=f"{b['volume']}/{b['backup_target']}",
            )
            for b in items
        ]
    if key == "backups_overdue":
        return [
            el(
                "li",
                el("span", b["volume"], class_="name"),
                f" → {b['backup_target']}: last success ",
                when(b["last_success"], now),
                f" ({_allowed(b['allowed'])})",
                data_object=f"{b['volume']}/{b['backup_target']}",
            )
            for b in items
        ]
    if key == "volumes_never_backed_up":
        return [
            el(
                "li",
                el("span", b["volume"], class_="name"),
                f" → {b['backup_target'] or 'default'}: created ",
                when(b["created"], now),
                f", no backup completed ({_allowed(b['allowed'])})",
                data_object=b["volume"],
            )
            for b in items
        ]
    if key == "disks_with_trouble":
        return [
            el("li", el("span", f"{d['node']} / {d['disk']}", class_="name"), data_object=d["disk"])
            for d in items
        ]
    return [el("li", el("span", name, class_="name"), data_object=name) for name in items]


# The summary strip of the cluster page: label, key in the summary (and in
# ``triage.counted``), colour when not 0, what it counts (the tooltip).
STRIP: tuple[tuple[str, str, str, str], ...] = (
    ("Healthy", "volumes_healthy", "good", "longhorn_volume_healthy 1: needs nothing"),
    ("Not healthy", "volumes_unhealthy", "warn", "longhorn_volume_healthy 0"),
    ("Degraded", "rob:degraded", "warn", "robustness degraded"),
    ("Faulted", "rob:faulted", "crit", "robustness faulted"),
    ("Unknown", "rob:unknown", "plain", "robustness unknown: a detached volume reads unknown"),
    (
        "Replicas missing",
        "replicas_missing",
        "warn",
        "healthy replicas fewer than desired, summed over volumes (a healthy detached volume "
        "has all it needs)",
    ),
    (
        "Backups failing",
        "backups_failing",
        "crit",
        "volume/target pairs whose newest failure is newer than the volume's newest "
        "completed backup (LonghornBackupFailed)",
    ),
    (
        "Backups overdue",
        "backups_overdue",
        "warn",
        "volume/target pairs whose last success is older than the volume's backup job "
        "interval + 2 h, or 26 h without a job (LonghornBackupOverdue)",
    ),
    (
        "Never backed up",
        "volumes_never_backed_up",
        "warn",
        "volumes a backup job applies to, with no completed backup, older than the job "
        "interval + 2 h (LonghornBackupOverdue)",
    ),
    ("Nodes not ready", "nodes_not_ready", "crit", "Longhorn nodes whose Ready is not True"),
    ("Disks in trouble", "disks_with_trouble", "warn", "disks not Ready or not Schedulable"),
)


def _summary_strip(row: dict[str, Any], now: float) -> Html:
    """Each count of the summary, and the objects it counts when opened."""
    s, t = row["summary"], row["triage"]
    if s is None or t is None:
        return Html("")
    counted = t["counted"]
    items = [
        el(
            "div",
            el("span", "Volumes", class_="what"),
            el("span", str(s["volumes"]), class_="n", data_count="volumes"),
            class_="count total",
        )
    ]
    for label, key, bad, title in STRIP:
        if key.startswith("rob:"):
            state = key[4:]
            value, objects = (
                s["volumes_by_robustness"][state],
                counted["volumes_by_robustness"][state],
            )
            key = f"volumes_{state}"
        else:
            value, objects = s[key], counted[key]
        number = _count(value, bad)
        if key == "nodes_not_ready":
            number = join([number, el("span", f"/{s['nodes']}", class_="dim")])
        head = el(
            "summary",
            el("span", label, class_="what"),
            el("span", number, class_="n", data_count=key),
            title=title,
        )
        if objects is None:
            body = el("p", "not known: a resource it needs did not list", class_="none")
        elif not objects:
            body = el("p", "none", class_="none")
        else:
            body = el("ul", *_counted_items(key, objects, now))
        items.append(el("details", head, body, class_="count", data_key=key))
    return el("div", *items, class_="strip", id="counts")


def _flag(ok: bool, good: str, bad: str) -> Html:
    return el("span", good, class_="good") if ok else el("span", bad, class_="crit")


def _table(headers: list[Any], rows: list[Html], empty: str, **attrs: Any) -> Html:
    """``headers`` are texts or (text, tooltip) pairs."""
    if not rows:
        return el("p", empty, class_="none")
    cells = (el("th", *h[:1], title=h[1]) if isinstance(h, tuple) else el("th", h) for h in headers)
    head = el("thead", el("tr", *cells))
    return el("table", head, el("tbody", *rows), **attrs)


def _conditions(conds: list[dict[str, str]]) -> Html:
    return join(
        el(
            "div",
            el("b", c["type"]),
            f" {c['status']}",
            f" · {c['reason']}" if c["reason"] else "",
            el("span", " ", with_sizes(c["message"]), class_="msg") if c["message"] else "",
            class_="cond",
        )
        for c in conds
    )


_ROBUSTNESS_ORDER = {"faulted": 0, "degraded": 1, "unknown": 2, "healthy": 3}


def _last_backup(v: dict[str, Any], now: float) -> list[Any]:
    lb = v["last_backup"]
    if lb is None:
        backup: list[Any] = [el("span", "no backup", class_="dim")]
    else:
        cls = {"Completed": "good", "Error": "crit"}.get(lb["state"], "warn")
        backup = [el("span", lb["state"], class_=cls), " ", when(lb["time"], now)]
        if lb["error"]:
            backup.append(el("div", lb["error"], class_="msg"))
    if v["last_successful_backup"] is not None and (lb is None or lb["state"] != "Completed"):
        backup += [el("div", "last good ", when(v["last_successful_backup"], now))]
    return backup


def _volumes_section(triage: dict[str, Any], now: float) -> Html:
    volumes = sorted(
        triage["volumes"], key=lambda v: (_ROBUSTNESS_ORDER.get(v["robustness"], 9), v["name"])
    )
    down = {n["name"] for n in triage["nodes"] if not n["ready"]}
    rows = []
    for v in volumes:
        desired, healthy = v["replicas_desired"], v["replicas_healthy"]
        replicas = f"{'?' if healthy is None else healthy}/{'?' if desired is None else desired}"
        pvc = f"{v['pvc_namespace']}/{v['pvc']}" if v["pvc"] else ""
        why = [el("div", reason, class_="why") for reason in v["why"]]
        rows.append(
            el(
                "tr",
                el("td", el("span", v["robustness"], class_=f"badge rob-{v['robustness']}")),
                el("td", el("span", v["name"], class_="name"), el("div", pvc, class_="msg")),
                el("td", v["state"]),
                el("td", replicas, class_="num", title="healthy / desired replicas"),
                el("td", _progress(v["rebuild_progress"])),
                el("td", v["attached_node"] or v["owner_node"] or DASH),
                el("td", *_last_backup(v, now)),
                el("td", *why, _conditions([c for c in v["conditions"] if _bad_condition(c)])),
                class_=f"vol rob-{v['robustness']}",
            )
        )
        rows.extend(_replica_row(r, now, down) for r in v["replicas"])
    return _table(
        [
            ("Health", "volume robustness; replica health (healthy, rebuilding, failed, ...)"),
            "Volume / PVC · replica",
            ("State", "volume state; replica state"),
            ("Replicas · mode", "volume: healthy / desired replicas; replica: its engine mode"),
            "Rebuild",
            ("Node", "volume: attached (or owner) node; replica: its node"),
            ("Last backup", "the volume's newest backup, any target"),
            ("Why", "why the volume is not healthy; for a replica, why it is not healthy"),
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
    why: list[Any] = []
    if failed is not None:
        why.append(el("div", "failed ", when(failed, now), class_="crit"))
    if not r["node"]:
        why.append(el("div", "not scheduled to a node", class_="crit"))
    elif r["node"] in down_nodes:
        why.append(el("div", "its node is not ready", class_="crit"))
    if not r["active"]:
        why.append(el("div", "inactive (not counted)", class_="dim"))
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
        ),
        el("td", ""),
        el("td", *why),
        class_="replica",
    )


def _disk(d: dict[str, Any]) -> Html:
    used = None
    if d["capacity"] is not None and d["available"] is not None:
        used = d["capacity"] - d["available"]
    figures = [
        ("used", used),
        ("of", d["capacity"]),
        ("· scheduled", d["scheduled"]),
        ("· reserved", d["reserved"]),
    ]
    return el(
        "div",
        el("span", d["name"], class_="name"),
        f" {d['path']} ",
        el("span", *(join([f" {w} ", size(n)]) for w, n in figures), class_="figures"),
        _conditions([c for c in d["conditions"] if c["status"] != "True"]),
        class_="disk",
    )


def _nodes_section(triage: dict[str, Any]) -> Html:
    rows = [
        el(
            "tr",
            el("td", el("span", n["name"], class_="name")),
            el("td", _flag(n["ready"], "ready", "NOT READY")),
            el("td", "yes" if n["allow_scheduling"] else el("span", "disabled", class_="warn")),
            el("td", _conditions(n["conditions"])),
            el("td", *(_disk(d) for d in n["disks"])),
        )
        for n in triage["nodes"]
    ]
    return _table(
        ["Node", "Ready", "Scheduling", "Conditions not true", "Disks in trouble"],
        rows,
        "All nodes and disks are fine.",
        id="nodes",
    )


def _node_replicas_section(triage: dict[str, Any]) -> Html:
    per_node = triage["node_replicas"]
    if per_node is None:
        return el("p", "Not known: replicas, engines or nodes did not list.", class_="none")
    rows = []
    for n in per_node:
        held: Html | str = ""
        if n["volumes"] is not None:
            held = el(
                "details",
                el("summary", f"held replicas of {len(n['volumes'])} volumes"),
                el("ul", *(el("li", el("span", v, class_="name")) for v in n["volumes"])),
                class_="held",
            )
        rows.append(
            el(
                "tr",
                el("td", el("span", n["node"], class_="name")),
                el("td", _flag(n["ready"], "ready", "NOT READY")),
                el("td", str(n["healthy"]), class_="num"),
                el("td", _count(n["rebuilding"]), class_="num"),
                el("td", _count(n["failed"], "crit"), class_="num"),
                el("td", str(n["stopped"]), class_="num"),
                el("td", held),
                data_node=n["node"],
            )
        )
    return _table(
        [
            "Node",
            "Ready",
            ("Healthy", "active replicas in mode RW"),
            ("Rebuilding", "active replicas in mode WO"),
            ("Failed", "active replicas in mode ERR or with failedAt set"),
            ("Stopped", "active replicas with no mode: their volume is not attached"),
            ("Volumes held", "for a node that is not ready: the volumes it held replicas of"),
        ],
        rows,
        "No Longhorn node.",
        id="node-replicas",
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
            el("td", "-" if r["seconds"] is None else f"{r['seconds']:.3f}s", class_="num"),
            el("td", r["error"] or ("" if not r["malformed"] else f"{r['malformed']} malformed")),
        )
        for name, r in res.items()
    ]
    return _table(
        ["Resource", "Listed", "Objects", "Pages", "Took", "Error"],
        rows,
        "No refresh since the exporter started.",
        id="resources",
    )


def _resources_title(last: dict[str, Any] | None, now: float) -> Html:
    if last is None:
        return Html("Last refresh, per resource")
    verdict = el("span", "ok", class_="good") if last["ok"] else el("span", "FAILED", class_="crit")
    return join(
        ["Last refresh (", verdict, ", ", when(last["finished_at"], now), "), per resource"]
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
            el("h2", "Replicas per node", id="node-replicas-h"),
            _node_replicas_section(triage),
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
            detail["status_label"],
            class_=f"badge st-{detail['status']} h-{detail['health']}",
            id="status",
        ),
        health=detail["health"],
        labels=join(el("span", f"{k}={v}", class_="label") for k, v in detail["labels"].items()),
        version=summary.get("longhorn_version") or "version unknown",
        refreshed=refreshed,
        error=el("p", error, class_="error", id="last-error") if error else Html(""),
        notice=_notices(detail, now),
        strip=_summary_strip(detail, now),
        body=body,
        resources_title=_resources_title(last, now),
        resources=_resources_section(detail["resources"]),
        history_count=str(len(detail["history"])),
        history=_history_section(detail["history"], now),
        probe_link=f"../probe?cluster={name}&debug=true",
        api_link=f"../api/clusters/{name}",
        generated=utc(now),
    )


# --------------------------------------------------------------------------- overview

# The overview's columns: key (overview.js has the same keys), header, tooltip, numeric.
OVERVIEW_COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("status", "Status", "Worst first: down, broken config, faulted volumes, then warnings", False),
    ("name", "Cluster", "", False),
    ("age", "Age", "Age of the data the counts come from", True),
    ("refresh", "Refresh", "How long the last refresh of this cluster took", True),
    ("version", "Version", "Longhorn version", False),
    ("volumes", "Volumes", "", True),
    ("unhealthy", "Not healthy", "Volumes with longhorn_volume_healthy 0", True),
    ("degraded", "Degr.", "Volumes with robustness degraded", True),
    ("faulted", "Faulted", "Volumes with robustness faulted", True),
    (
        "missing",
        "Repl. missing",
        "Healthy replicas fewer than desired, summed over volumes (a healthy detached "
        "volume has all it needs)",
        True,
    ),
    (
        "failing",
        "Backups failing",
        "Volume/target pairs whose newest failure is newer than the volume's newest "
        "completed backup (LonghornBackupFailed)",
        True,
    ),
    (
        "overdue",
        "Backups overdue",
        "What LonghornBackupOverdue counts: volume/target pairs whose last success is too "
        "old, plus volumes never backed up though a backup job applies",
        True,
    ),
    ("nodes", "Nodes down", "Nodes not ready / nodes", True),
    ("disks", "Disks", "Disks not Ready or not Schedulable", True),
    ("error", "Last error", "", False),
)


def _overdue(s: dict[str, Any]) -> int | None:
    """The overview's "Backups overdue": both cases of LonghornBackupOverdue."""
    a, b = s["backups_overdue"], s["volumes_never_backed_up"]
    return None if a is None or b is None else a + b


def _overview_cell(key: str, c: dict[str, Any]) -> Html:
    """One cell of the overview, as overview.js writes it (keep the two alike)."""
    s = c["summary"]
    numeric = {k: n for k, _, _, n in OVERVIEW_COLUMNS}[key]
    attrs: dict[str, Any] = {"data_key": key, "class_": "num" if numeric else None}
    if key == "status":
        badge = el("span", c["status_label"], class_=f"badge st-{c['status']} h-{c['health']}")
        return el("td", badge, title=c["health"], **attrs)
    if key == "name":
        labels = " ".join(f"{k}={v}" for k, v in c["labels"].items())
        return el("td", el("a", c["name"], href=f"clusters/{c['name']}"), title=labels, **attrs)
    if key == "age":
        warn = " warn" if c["status"] == "stale" else ""
        r = c["last_refresh"]
        took = f"last refresh took {_secs(r['duration_seconds'])}" if r else None
        return el("td", ago(c["data_age_seconds"]), data_key=key, class_="num" + warn, title=took)
    if key == "refresh":
        r = c["last_refresh"]
        text = (_secs(r["duration_seconds"]) if r else DASH) + (" ⟳" if c["refreshing"] else "")
        return el("td", text, **attrs)
    if key == "error":
        return el(
            "td", c["last_error"] or "", title=c["last_error"] or "", data_key=key, class_="err"
        )
    if s is None:
        return el("td", "", **attrs)
    rob = s["volumes_by_robustness"]
    counts = {
        "unhealthy": (s["volumes_unhealthy"], "warn"),
        "degraded": (rob["degraded"], "warn"),
        "faulted": (rob["faulted"], "crit"),
        "missing": (s["replicas_missing"], "warn"),
        "failing": (s["backups_failing"], "crit"),
        "overdue": (_overdue(s), "warn"),
        "nodes": (s["nodes_not_ready"], "crit"),
        "disks": (s["disks_with_trouble"], "warn"),
    }
    if key == "version":
        return el("td", s["longhorn_version"] or "", **attrs)
    if key == "volumes":
        return el("td", str(s["volumes"]), **attrs)
    value, bad = counts[key]
    text = "?" if value is None else str(value)
    if key == "nodes":
        text += f"/{s['nodes']}"
    cls = "num dim" if value is None else f"num {bad}" if value else "num zero"
    title = None
    if key == "overdue" and value is not None:
        title = f"{s['backups_overdue']} overdue, {s['volumes_never_backed_up']} never backed up"
    return el("td", text, data_key=key, class_=cls, title=title)


def _secs(s: float) -> str:
    """As overview.js's ``secs``: JavaScript's toFixed rounds the exact binary value, a
    half up."""
    if s >= 10:
        return ago(s)
    return f"{Decimal(s).quantize(Decimal('0.01'), ROUND_HALF_UP)}s"


def overview_page(data: dict[str, Any]) -> str:
    """The overview as the server renders it: the whole table, worst first, so the page
    says what matters without JavaScript; overview.js then keeps it current, sortable and
    filterable."""
    head = el(
        "tr",
        *(
            el("th", header, data_key=key, class_="num" if num else None, title=title or None)
            for key, header, title, num in OVERVIEW_COLUMNS
        ),
    )
    body = [
        el(
            "tr",
            *(_overview_cell(key, c) for key, _, _, _ in OVERVIEW_COLUMNS),
            class_=f"h-{c['health']} st-{c['status']}",
            data_name=c["name"],
        )
        for c in data["clusters"]
    ]
    by_status, by_health = data["by_status"], data["by_health"]
    order = ["down", "broken", "stale", "unprobed", "up"]
    counts = f"{len(data['clusters'])} clusters: " + ", ".join(
        f"{by_status[s]} {STATUS_TEXT[s]}" for s in order if by_status.get(s)
    )
    counts += f" · {by_health.get('critical', 0)} critical, {by_health.get('warning', 0)} warning"
    problems = join(
        el("p", f"{p['what']}: {p['message']} (not served)", class_="notice warn problem")
        for p in data["problems"]
    )
    return render(
        "overview.html",
        static=Html("static"),
        v=_static_version(),
        counts=counts,
        problems=problems,
        head=head,
        rows=join(body),
        updated=f"as of {utc(data['generated_at'])}",
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
    return _page(overview_page(fleet_overview(request.app[FLEET], request.app[DERIVED])))


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
