"""Every count the pages show (the overview with and without JavaScript, the cluster page,
``fleet-exporter triage``) is the number the alerting rules' arithmetic gives from the
same refresh's ``/probe`` metrics (tests/rule_counts.py), each count of the cluster page
opens to exactly the objects it counts, and nothing is cut off at 1,000 px.

The simulated fleet (tests/browser/simfleet.py) has detached volumes, overdue, failing and
never-made backups, a faulted volume whose replicas all failed, a node down, a disk under
pressure and an unreachable cluster; the exporter's cache TTL is 10 minutes, so the pages
and the probes read the same refresh."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import urllib.request

import pytest
from playwright.sync_api import Browser, Page

from ..conftest import samples
from ..rule_counts import normalize, rule_counts, rule_objects
from .conftest import ROOT, Live, Watched

pytestmark = pytest.mark.browser

# The overview's count columns: summary key(s) -> cell key.
OVERVIEW = {
    "unhealthy": "volumes_unhealthy",
    "missing": "replicas_missing",
    "failing": "backups_failing",
    "disks": "disks_with_trouble",
}
STRIP = (
    "volumes_healthy",
    "volumes_unhealthy",
    "volumes_degraded",
    "volumes_faulted",
    "volumes_unknown",
    "replicas_missing",
    "backups_failing",
    "backups_overdue",
    "volumes_never_backed_up",
    "nodes_not_ready",
    "disks_with_trouble",
)


def metrics(live: Live, name: str) -> tuple[str, list]:
    """The probe's answer as text, and its samples."""
    req = urllib.request.Request(f"{live.url}/probe?cluster={name}")
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    return text, normalize(samples(text))


def expected(live: Live, name: str) -> tuple[dict, dict, dict]:
    """(counts, objects, detail) for one cluster that is up: the rules' numbers from the
    probe's metrics at the refresh's own time."""
    detail = live.api(f"/{name}")
    _, smp = metrics(live, name)
    now = detail["triage"]["now"]
    return rule_counts(smp, now), rule_objects(smp, now), detail


def overview_expectation(counts: dict) -> dict[str, str]:
    rob = counts["volumes_by_robustness"]
    want = {key: str(counts[k]) for key, k in OVERVIEW.items()}
    overdue = counts["backups_overdue"], counts["volumes_never_backed_up"]
    return want | {
        "volumes": str(counts["volumes"]),
        "degraded": str(rob["degraded"]),
        "faulted": str(rob["faulted"]),
        "overdue": "?" if None in overdue else str(sum(overdue)),
        "nodes": f"{counts['nodes_not_ready']}/{counts['nodes']}",
    }


ROWS_JS = """() => Object.fromEntries([...document.querySelectorAll('#clusters tbody tr')].map(
    tr => [tr.dataset.name, Object.fromEntries([...tr.cells].map(td => [td.dataset.key,
    td.textContent]))]))"""


def overview_rows(page: Page, url: str, script: bool) -> dict[str, dict[str, str]]:
    page.goto(f"{url}/")
    if script:
        page.wait_for_selector("body[data-loaded]")
    return page.evaluate(ROWS_JS)


@pytest.fixture(scope="module")
def up_clusters(live: Live) -> list[str]:
    return [c["name"] for c in live.api()["clusters"] if c["status"] == "up"]


def test_overview_counts_are_the_rules_counts_with_and_without_javascript(
    browser: Browser, live: Live, up_clusters
):
    pages = {}
    for script in (True, False):
        context = browser.new_context(
            viewport={"width": 1000, "height": 800}, java_script_enabled=script
        )
        pages[script] = overview_rows(context.new_page(), live.url, script)
        context.close()
    assert pages[True].keys() == pages[False].keys() == {c["name"] for c in live.api()["clusters"]}
    assert len(up_clusters) >= 14
    for name in up_clusters:
        counts, _, detail = expected(live, name)
        want = overview_expectation(counts)
        for script, rows in pages.items():
            row = rows[name]
            assert {k: row[k] for k in want} == want, (name, script)
            assert row["status"] == detail["status_label"], (name, script)
    for name, row in pages[False].items():  # the server's rows are the script's rows
        assert {k: v for k, v in row.items() if k != "age"} == {
            k: v for k, v in pages[True][name].items() if k != "age"
        }, name


def test_cluster_page_counts_open_to_the_objects_the_rules_count(
    watched: Watched, live: Live, up_clusters
):
    page = watched.page
    seen = dict.fromkeys(STRIP, 0)
    for name in up_clusters:
        counts, objects, detail = expected(live, name)
        page.goto(f"{live.url}/clusters/{name}")
        shown = {
            key: page.locator(f"[data-count='{key}'] > span").first.inner_text() for key in STRIP
        }
        rob = counts["volumes_by_robustness"]
        want = {
            "volumes_degraded": rob["degraded"],
            "volumes_faulted": rob["faulted"],
            "volumes_unknown": rob["unknown"],
        } | {k: counts[k] for k in STRIP if k in counts}
        assert shown == {k: "?" if v is None else str(v) for k, v in want.items()}, name
        assert page.locator("[data-count='volumes']").inner_text() == str(counts["volumes"])
        for key in STRIP:
            details = page.locator(f"details[data-key='{key}']")
            details.locator("summary").click()
            assert details.get_attribute("open") is not None
            items = details.locator("li")
            got = set(items.evaluate_all("els => els.map(e => e.dataset.object)"))
            if key == "replicas_missing":
                n = sum(int(x) for x in items.evaluate_all("els => els.map(e => e.dataset.n)"))
                assert n == want[key], name
                assert got == set(objects[key]), name
            else:
                assert items.count() == want[key], (name, key)
                if key[8:] in ("degraded", "faulted", "unknown"):
                    assert got == objects["volumes_by_robustness"][key[8:]]
                elif key in ("backups_failing", "backups_overdue"):
                    assert got == {f"{v}/{t}" for v, t in objects[key]}, (name, key)
                elif key == "disks_with_trouble":
                    assert got == {d for _, d in objects[key]}, name
                else:
                    assert got == set(objects[key]), (name, key)
            seen[key] += want[key] or 0
        # Replicas per node: longhorn_node_replicas, node by node.
        table = page.evaluate(NODE_TABLE_JS)
        assert {n: cells for n, cells, _ in table} == {
            node: [str(by_state[s]) for s in NODE_STATES]
            for node, by_state in (objects["node_replicas"] or {}).items()
        }, name
        down = {n["node"]: n for n in detail["triage"]["node_replicas"] if not n["ready"]}
        for node, n in down.items():
            held = {
                v["name"]
                for v in detail["triage"]["volumes"]
                for r in v["replicas"]
                if r["node"] == node and r["active"]
            }
            assert held <= set(n["volumes"])  # the unhealthy ones at least
            listed = next(h for x, _, h in table if x == node)
            assert listed == n["volumes"] and listed, node
    # The fleet really has each situation, so each count was checked with objects in it.
    missing = [k for k, n in seen.items() if not n and k != "volumes_unknown"]
    assert not missing, missing
    assert watched.errors == []


NODE_STATES = ("healthy", "rebuilding", "failed", "stopped")
NODE_TABLE_JS = """() => [...document.querySelectorAll('#node-replicas tr[data-node]')].map(tr =>
    [tr.dataset.node, [...tr.querySelectorAll('td.num')].map(td => td.innerText),
     [...tr.querySelectorAll('details.held li')].map(li => li.textContent)])"""


def test_the_faulted_volume_says_why_and_replica_rows_say_what_failed(
    watched: Watched, live: Live, artifacts
):
    page = watched.page
    page.set_viewport_size({"width": 1000, "height": 800})
    cluster = next(
        c["name"]
        for c in live.api()["clusters"]
        if c["summary"] and c["summary"]["volumes_by_robustness"]["faulted"]
    )
    page.goto(f"{live.url}/clusters/{cluster}")
    row = page.locator("#volumes tr.vol.rob-faulted").first
    why = row.locator("td").nth(7).inner_text()
    assert re.search(r"faulted: all \d replicas failed", why), why
    headers = page.locator("#volumes thead th").all_inner_texts()
    assert headers[6] == "Last backup" and headers[7] == "Why"
    for replica in page.locator("#volumes tr.replica").all():
        cells = replica.locator("td").all_inner_texts()
        assert "failed" not in cells[6]  # nothing under Last backup for a replica
    failed = page.locator("#volumes tr.replica", has_text="ERR").first
    assert re.match(r"failed \w+ ago", failed.locator("td").nth(7).inner_text())
    page.screenshot(path=artifacts / "cluster-faulted-1000.png", full_page=True)
    assert watched.errors == []


def test_a_down_cluster_shows_its_failed_refresh_per_resource(
    watched: Watched, live: Live, artifacts
):
    page = watched.page
    page.set_viewport_size({"width": 1000, "height": 800})
    down = next(c for c in live.api()["clusters"] if c["status"] == "down")
    page.goto(f"{live.url}/clusters/{down['name']}")
    assert page.locator("#status").inner_text() == "down · critical"
    assert "No refresh" not in page.content()
    assert page.locator("#resources-h").inner_text().startswith("Last refresh (FAILED")
    errors = page.locator("#resources tbody td:last-child").all_inner_texts()
    assert len(errors) == 10 and all("cannot connect" in e for e in errors), errors
    log = page.locator("#history details.probe pre").first.inner_text()
    calls = log.split("Upstream calls:", 1)[1].split("Resources:", 1)[0].strip().splitlines()
    assert len(calls) == 1 and "calls alike" in calls[0], calls
    page.screenshot(path=artifacts / "cluster-down-1000.png", full_page=True)
    assert watched.errors == []


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('th, td, summary, li, pre, p, h1, h2')) {
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > width + 0.5 || r.left < -0.5))
      out.push(el.tagName + ' ' + (el.dataset.key || el.className || '') + ' ' +
        Math.round(r.left) + '..' + Math.round(r.right));
  }
  return {width, scroll: document.documentElement.scrollWidth, out};
}"""


def test_nothing_is_cut_off_at_1000_px(browser: Browser, live: Live, artifacts):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    api = live.api()
    faulted = next(c["name"] for c in api["clusters"] if c["health"] == "critical" and c["summary"])
    detached = next(
        c["name"]
        for c in api["clusters"]
        if c["summary"] and c["summary"]["volumes_by_robustness"]["unknown"]
    )
    for path, shot in (
        ("/", "overview-1000.png"),
        (f"/clusters/{faulted}", None),
        (f"/clusters/{detached}", "cluster-detached-1000.png"),
    ):
        page.goto(live.url + path)
        if path == "/":
            page.wait_for_selector("body[data-loaded]")
        else:
            for d in page.locator("details").all():  # every count and log open
                d.evaluate("d => d.open = true")
        found = page.evaluate(OVERFLOW_JS)
        assert found["out"] == [] and found["scroll"] <= found["width"], (path, found)
        if shot:
            page.screenshot(path=artifacts / shot, full_page=path != "/")
    error_cells = page.locator("#clusters td[data-key='error']")
    page.goto(live.url + "/")
    page.wait_for_selector("body[data-loaded]")
    assert error_cells.count() == len(api["clusters"])
    box = page.locator("#clusters th[data-key='error']").bounding_box()
    assert box and box["x"] + box["width"] <= 1000 and box["width"] >= 100
    context.close()


def test_chromium_sees_the_whole_probe_answer(watched: Watched, live: Live, up_clusters):
    """The answer is one gzip member: a browser (which asks for gzip) sees all of it, down
    to the last family."""
    name = up_clusters[0]
    req = urllib.request.Request(
        f"{live.url}/probe?cluster={name}", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(r.read()).decode()
    last_family = re.findall(r"^# TYPE (\S+)", text, re.M)[-1]
    page = watched.page
    response = page.goto(f"{live.url}/probe?cluster={name}")
    assert response is not None and response.headers.get("content-encoding") == "gzip"
    shown = page.evaluate("document.body.innerText")
    assert f"# TYPE {last_family} " in shown
    assert (
        shown.rstrip().splitlines()[-1].split(" ")[0]
        == text.rstrip().splitlines()[-1].split(" ")[0]
    )
    assert len(re.findall(r"^# TYPE ", shown, re.M)) == len(re.findall(r"^# TYPE ", text, re.M))
    assert watched.errors == []


def test_triage_cli_counts_are_the_rules_counts(live: Live, up_clusters):
    for name in up_clusters[:6]:
        counts, _, _ = expected(live, name)
        out = subprocess.run(
            [sys.executable, "-m", "fleet_exporter", "triage", name, "--url", live.url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("volumes "))
        said = dict(re.findall(r"([a-z ]+?) (\?|\d+(?:/\d+)?)(?: · |$)", line))
        rob = counts["volumes_by_robustness"]
        want = {
            "volumes": counts["volumes"],
            "healthy": counts["volumes_healthy"],
            "not healthy": counts["volumes_unhealthy"],
            "degraded": rob["degraded"],
            "faulted": rob["faulted"],
            "replicas missing": counts["replicas_missing"],
            "backups failing": counts["backups_failing"],
            "backups overdue": counts["backups_overdue"],
            "never backed up": counts["volumes_never_backed_up"],
            "disks in trouble": counts["disks_with_trouble"],
        }
        assert {k: said.get(k) for k in want} == {k: str(v) for k, v in want.items()}, (name, line)
        assert said["nodes not ready"] == f"{counts['nodes_not_ready']}/{counts['nodes']}"
