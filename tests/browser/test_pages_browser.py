"""The pages in a real browser (headless Chromium), against the real exporter serving a
simulated fleet; screenshots go to tests/artifacts/ for a person to look at."""

from __future__ import annotations

import shutil
import time

import pytest
from playwright.sync_api import Page

from simulator.objects import HOSTILE_NAMES, HOSTILE_NODE

from ..prometheus_harness import poll
from .conftest import HOSTILE, HOSTILE_LABEL, Live, Watched

pytestmark = pytest.mark.browser

ROWS_JS = """() => [...document.querySelectorAll('#clusters tbody tr')].map(tr =>
    Object.fromEntries([...tr.cells].map(td => [td.dataset.key, td.textContent])))"""


def open_overview(page: Page, url: str, query: str = "") -> None:
    page.goto(f"{url}/{query}")
    page.wait_for_selector("body[data-loaded]")


def rows(page: Page) -> list[dict[str, str]]:
    return page.evaluate(ROWS_JS)


def names(page: Page) -> list[str]:
    return [r["name"] for r in rows(page)]


def wait_rows(page: Page, predicate, what: str) -> list[dict[str, str]]:
    def check():
        r = rows(page)
        return (r,) if predicate(r) else None  # a tuple: an empty list is an answer too

    return poll(check, 5, what, interval=0.05)[0]


def expected_cells(c: dict) -> dict[str, str]:
    """What the overview must show for one API row."""
    s = c["summary"]
    keys = ["version", "volumes", "unhealthy", "degraded", "faulted", "missing", "failing"]
    if s is None:
        counts = dict.fromkeys([*keys, "overdue", "nodes", "disks"], "")
    else:
        rob = s["volumes_by_robustness"]

        def n(v):
            return "?" if v is None else str(v)

        overdue = s["backups_overdue"], s["volumes_never_backed_up"]
        counts = {
            "version": s["longhorn_version"] or "",
            "volumes": str(s["volumes"]),
            "unhealthy": str(s["volumes_unhealthy"]),
            "degraded": str(rob["degraded"]),
            "faulted": str(rob["faulted"]),
            "missing": n(s["replicas_missing"]),
            "failing": n(s["backups_failing"]),
            "overdue": "?" if None in overdue else str(sum(overdue)),
            "nodes": f"{s['nodes_not_ready']}/{s['nodes']}",
            "disks": n(s["disks_with_trouble"]),
        }
    return {"name": c["name"], "status": c["status_label"], "error": c["last_error"] or ""} | counts


def test_overview_lists_every_cluster_with_the_api_counts(watched: Watched, live: Live, artifacts):
    page = watched.page
    open_overview(page, live.url)
    api = live.api()
    shown = rows(page)
    # Same clusters, same worst-first order, same numbers as /api/clusters.
    assert len(shown) == len(api["clusters"]) == 16
    for row, c in zip(shown, api["clusters"], strict=True):
        want = expected_cells(c)
        assert {k: row[k] for k in want} == want
    statuses = [c["status"] for c in api["clusters"]]
    assert {"up", "down", "broken"} <= set(statuses)
    assert shown[0]["status"].split(" · ")[0] in ("down", "broken config", "up")
    assert api["clusters"][0]["health"] == "critical"
    counts = page.locator("#counts").inner_text()
    assert "16 clusters:" in counts and "1 broken config" in counts
    assert page.title().startswith("(")  # problems show in the tab title
    page.screenshot(path=artifacts / "overview.png", full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=artifacts / "overview-dark.png")
    assert watched.errors == []


def test_sorting_by_any_column_and_back_to_worst_first(watched: Watched, live: Live):
    page = watched.page
    open_overview(page, live.url)
    worst_first = names(page)
    header = page.locator("#clusters th[data-key='name'] button")
    header.click()
    assert names(page) == sorted(worst_first)
    assert page.get_attribute("#clusters th[data-key='name']", "aria-sort") == "ascending"
    header.click()
    assert names(page) == sorted(worst_first, reverse=True)

    page.locator("#clusters th[data-key='volumes'] button").click()
    volumes = [r["volumes"] for r in rows(page)]
    numbers = [int(v) for v in volumes if v]
    assert numbers == sorted(numbers, reverse=True)
    assert volumes[len(numbers) :] == [""] * (len(volumes) - len(numbers))  # no data: last
    assert "sort=-volumes" in page.url
    page.reload()  # the sort is in the URL, so a reload keeps it
    page.wait_for_selector("body[data-loaded]")
    assert [r["volumes"] for r in rows(page)] == volumes

    status = page.locator("#clusters th[data-key='status'] button")
    status.click()  # a new column starts in its natural direction: worst first
    assert names(page) == worst_first
    assert "sort=" not in page.url  # the default needs no state in the URL
    status.click()
    assert names(page)[-1] == worst_first[0]  # best first
    assert watched.errors == []


def test_filter_box_and_status_buttons(watched: Watched, live: Live):
    page = watched.page
    open_overview(page, live.url)
    api = live.api()
    everyone = len(api["clusters"])
    target = api["clusters"][3]["name"]

    page.fill("#filter", target)
    assert [r["name"] for r in wait_rows(page, lambda r: len(r) == 1, "one row")] == [target]
    assert page.locator("#shown").inner_text() == f"1 of {everyone} shown"

    page.fill("#filter", "status:down")
    down = [c["name"] for c in api["clusters"] if c["status"] == "down"]
    got = wait_rows(page, lambda r: [x["name"] for x in r] == down, "only the down ones")
    assert {r["status"] for r in got} == {"down · critical"}

    page.fill("#filter", "-status:up")
    not_up = [c["name"] for c in api["clusters"] if c["status"] != "up"]
    wait_rows(page, lambda r: [x["name"] for x in r] == not_up, "all but the up ones")

    page.press("#filter", "Escape")
    wait_rows(page, lambda r: len(r) == everyone, "everyone again")

    page.locator("#counts button", has_text="broken config").click()
    assert page.input_value("#filter") == "status:broken"
    got = wait_rows(page, lambda r: len(r) == 1, "the broken one")
    assert got[0]["name"] == "broken-config"
    assert "kubeconfig" in got[0]["error"]

    page.fill("#filter", "no-such-cluster-anywhere")
    wait_rows(page, lambda r: r == [], "nothing")
    assert page.locator("#empty").is_visible()
    assert watched.errors == []


def test_click_on_a_degraded_cluster_opens_its_triage_page(watched: Watched, live: Live, artifacts):
    page = watched.page
    open_overview(page, live.url)
    degraded = next(
        c
        for c in live.api()["clusters"]
        if c["status"] == "up" and c["summary"]["volumes_by_robustness"]["degraded"]
    )
    name = degraded["name"]
    page.locator(f"#clusters tbody tr[data-name='{name}'] td[data-key='name'] a").click()
    page.wait_for_url(f"**/clusters/{name}")
    assert page.locator("#cluster-name").inner_text() == name
    detail = live.api(f"/{name}")
    want = {v["name"] for v in detail["triage"]["volumes"]}
    assert want  # the cluster really has unhealthy volumes
    assert set(page.locator("#volumes tr.vol .name").all_text_contents()) == want
    robustness = page.locator("#volumes tr.vol .badge").all_text_contents()
    assert robustness.count("degraded") == degraded["summary"]["volumes_by_robustness"]["degraded"]
    replicas = sum(len(v["replicas"]) for v in detail["triage"]["volumes"])
    assert page.locator("#volumes tr.replica").count() == replicas
    assert page.locator("#history details.probe").count() == len(detail["history"]) >= 1
    page.locator("#history details.probe summary").first.click()
    assert "Probe of cluster" in page.locator("#history details.probe pre").first.inner_text()
    page.screenshot(path=artifacts / "cluster-degraded.png", full_page=True)

    page.go_back()
    page.wait_for_selector("body[data-loaded]")
    assert len(rows(page)) == 16
    assert watched.errors == []


def test_hostile_names_are_shown_as_text(watched: Watched, live: Live, artifacts):
    page = watched.page
    page.goto(f"{live.url}/clusters/{HOSTILE}")
    volumes = page.locator("#volumes tr.vol .name").all_text_contents()
    for name in HOSTILE_NAMES:
        assert name in volumes, name
    assert HOSTILE_NODE in page.locator("#nodes .name").all_text_contents()
    assert f"team={HOSTILE_LABEL}" in page.locator("header .label").all_text_contents()
    assert page.evaluate("document.scripts.length") == 1  # only cluster.js
    assert page.locator("img").count() == 0
    page.screenshot(path=artifacts / "cluster-hostile.png", full_page=True)

    open_overview(page, live.url)
    cell = page.locator(f"#clusters tbody tr[data-name='{HOSTILE}'] td[data-key='name']")
    assert cell.get_attribute("title") == f"team={HOSTILE_LABEL}"
    page.fill("#filter", "onerror")  # labels are searchable, as text
    wait_rows(page, lambda r: [x["name"] for x in r] == [HOSTILE], "the hostile cluster")
    assert page.locator("img").count() == 0
    assert watched.errors == []


def test_refreshes_in_place_and_shows_added_clusters(watched: Watched, live: Live):
    page = watched.page
    open_overview(page, live.url, "?refresh=1")
    page.evaluate("window.marker = 42")
    loads = int(page.get_attribute("body", "data-loaded") or 0)
    template = next(p for p in sorted(live.clusters.glob("*.yaml")) if p.stem.startswith("eu-"))
    added = live.clusters / "zz-added-cluster.yaml"
    shutil.copy(template, added)
    try:
        live.reload()
        row = page.locator("#clusters tbody tr[data-name='zz-added-cluster']")
        row.wait_for(timeout=10_000)
        assert row.locator("td[data-key='status']").inner_text() == "not probed yet"
        assert page.evaluate("window.marker") == 42  # no full reload happened
        assert int(page.get_attribute("body", "data-loaded") or 0) > loads
    finally:
        added.unlink()
        live.reload()
    page.locator("#clusters tbody tr[data-name='zz-added-cluster']").wait_for(
        state="detached", timeout=10_000
    )
    assert watched.errors == []


def test_directory_problems_are_said_above_the_table(watched: Watched, live: Live):
    """A file that cannot be a cluster is in no row, so the overview says it above the
    table, as text (the name here is markup), and stops saying it once it is gone."""
    page = watched.page
    open_overview(page, live.url, "?refresh=1")
    bad = live.clusters / "<img src=x onerror=alert(1)>.yaml"
    bad.write_text("x")
    try:
        live.reload()
        notice = page.locator("#problems .problem")
        notice.wait_for(timeout=10_000)
        text = notice.inner_text()
        assert text.startswith("<img src=x onerror=alert(1)>.yaml: not a valid cluster name")
        assert page.locator("#problems img").count() == 0
    finally:
        bad.unlink()
        live.reload()
    page.locator("#problems .problem").wait_for(state="detached", timeout=10_000)
    assert watched.errors == []


def test_unreachable_exporter_is_said_and_the_last_data_kept(watched: Watched, live: Live):
    page = watched.page
    open_overview(page, live.url, "?refresh=1")
    before = len(rows(page))
    page.route("**/api/clusters", lambda route: route.abort())
    page.wait_for_selector("#offline:not([hidden])", timeout=10_000)
    assert "not answering" in page.locator("#offline").inner_text()
    assert len(rows(page)) == before
    page.unroute("**/api/clusters")
    page.wait_for_selector("#offline", state="hidden", timeout=10_000)
    assert all("Failed to load resource" in e for e in watched.errors), watched.errors
    watched.errors.clear()


def test_500_clusters_load_sort_and_filter_quickly(watched: Watched, standin_url: str, artifacts):
    page = watched.page
    started = time.monotonic()
    open_overview(page, standin_url)
    loaded = time.monotonic() - started
    assert len(rows(page)) == 500
    assert loaded < 5, loaded
    # Re-sorting and filtering run synchronously in the click/input handlers: time them
    # inside the page.
    took = page.evaluate(
        """() => { const t = performance.now();
        document.querySelector("th[data-key='volumes'] button").click();
        return performance.now() - t; }"""
    )
    assert took < 300, took
    page.fill("#filter", "c-01")
    got = wait_rows(page, lambda r: len(r) == 100, "c-0100 to c-0199")
    assert {r["name"][:4] for r in got} == {"c-01"}
    page.press("#filter", "Escape")
    wait_rows(page, lambda r: len(r) == 500, "all 500")
    page.screenshot(path=artifacts / "overview-500.png")
    assert watched.errors == []
