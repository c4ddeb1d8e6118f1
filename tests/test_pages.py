"""The overview, the triage page and their JSON API, against the simulated fleet over real
sockets and TLS; plus the terminal renderer of ``fleet-exporter triage``."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from argparse import Namespace
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest

from fleet_exporter import terminal as triage
from fleet_exporter.web import pages
from simulator.fleet import ClusterSpec
from simulator.objects import HOSTILE_NAMES, HOSTILE_NODE

from .browser.standin import standin_fleet
from .conftest import started_env, wait_for

SCRIPT = "<script>alert(1)</script>"
HOSTILE_LABEL = '"><img src=x onerror=alert(1)>'


def specs() -> list[ClusterSpec]:
    return [
        ClusterSpec(name="alpha", volumes=6, nodes=3, seed=1),
        ClusterSpec(name="beta", volumes=8, nodes=3, degraded_volumes=2, faulted_volumes=1, seed=2),
        ClusterSpec(name="gone", volumes=4, unreachable=True, seed=3),
        # Every volume degraded, so the hostile names are on the triage page; every node
        # down, so the hostile node is too.
        ClusterSpec(
            name="evil", volumes=8, nodes=3, nodes_down=3, degraded_volumes=8, hostile_names=True
        ),
    ]


FLEET_YAML = f"""
clusters:
  alpha:
    labels: {{team: {json.dumps(HOSTILE_LABEL)}, env: prod}}
"""


@pytest.fixture
async def env(tmp_path):
    async with started_env(tmp_path, specs(), FLEET_YAML) as e:
        await e.fleet.wait_ready()
        yield e


async def probe_all(env) -> None:
    await asyncio.gather(*(env.get(f"/probe?cluster={n}") for n in env.fleet.clusters))


async def api(env, path: str = "") -> dict:
    status, text, headers = await env.get("/api/clusters" + path)
    assert status == 200, text
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(text)


def served_volumes(env, cluster: str) -> dict[str, str]:
    """Volume name -> robustness, straight from what the simulator serves."""
    store = env.sim.cluster(cluster).store
    return {
        v["metadata"]["name"]: v["status"]["robustness"]
        for v in map(json.loads, store.items["volumes"])
    }


# --------------------------------------------------------------------------- JSON


async def test_before_any_probe_every_cluster_is_not_probed_yet_and_pages_call_nobody(env):
    before = env.upstream_requests()
    data = await api(env)
    assert [c["status"] for c in data["clusters"]] == ["unprobed"] * 4
    assert {c["status_text"] for c in data["clusters"]} == {"not probed yet"}
    assert {c["health"] for c in data["clusters"]} == {"unknown"}
    assert all(c["summary"] is None and c["last_probe"] is None for c in data["clusters"])
    for path in ["/", "/clusters/beta", "/api/clusters/beta"]:
        status, text, _ = await env.get(path)
        assert status == 200, (path, text)
    status, text, _ = await env.get("/clusters/beta")
    assert "not probed yet" in text
    assert env.upstream_requests() == before  # reading pages never reaches a cluster


async def test_overview_counts_match_what_the_clusters_serve(env):
    await probe_all(env)
    data = await api(env)
    rows = {c["name"]: c for c in data["clusters"]}
    assert set(rows) == {"alpha", "beta", "gone", "evil"}
    for name in ("alpha", "beta", "evil"):
        served = served_volumes(env, name)
        summary = rows[name]["summary"]
        assert rows[name]["status"] == "up"
        assert summary["volumes"] == len(served)
        for robustness in ("healthy", "degraded", "faulted"):
            expected = sum(1 for r in served.values() if r == robustness)
            assert summary["volumes_by_robustness"][robustness] == expected, (name, robustness)
        assert summary["nodes"] == env.sim.summary(name)["nodes"]
        assert summary["nodes_not_ready"] == env.sim.summary(name)["nodes_down"]
        assert rows[name]["data_age_seconds"] < 30
        assert rows[name]["last_refresh"]["ok"] is True
        assert rows[name]["last_probe"]["success"] is True
    assert rows["beta"]["summary"]["volumes_by_robustness"]["faulted"] == 1
    assert rows["alpha"]["labels"] == {"team": HOSTILE_LABEL, "env": "prod"}
    gone = rows["gone"]
    assert (gone["status"], gone["health"], gone["summary"]) == ("down", "critical", None)
    assert "cannot connect" in gone["last_error"] and "\n" not in gone["last_error"]
    # Worst first: down or with a faulted volume or lost nodes, then the healthy one.
    order = [c["name"] for c in data["clusters"]]
    assert order[-1] == "alpha" and set(order[:3]) == {"gone", "beta", "evil"}
    assert [c["severity"] for c in data["clusters"]] == sorted(
        (c["severity"] for c in data["clusters"]), reverse=True
    )
    assert (rows["alpha"]["health"], rows["evil"]["health"]) == ("ok", "critical")
    assert data["by_status"] == {"up": 3, "down": 1}


async def test_cluster_api_lists_exactly_the_unhealthy_volumes_with_replicas(env):
    await probe_all(env)
    d = await api(env, "/beta")
    served = served_volumes(env, "beta")
    unhealthy = {n for n, r in served.items() if r != "healthy"}
    assert {v["name"] for v in d["triage"]["volumes"]} == unhealthy
    for v in d["triage"]["volumes"]:
        assert v["replicas"], v["name"]
        assert {"name", "node", "mode", "health", "failed_at", "rebuild_progress"} <= set(
            v["replicas"][0]
        )
    faulted = next(v for v in d["triage"]["volumes"] if v["robustness"] == "faulted")
    assert faulted["replicas_healthy"] == 0
    assert d["settings"] == {"cache_ttl": 25.0, "max_staleness": 120.0}
    assert set(d["resources"]) >= {"volumes", "replicas", "engines", "backups", "nodes"}
    assert d["resources"]["volumes"]["objects"] == len(served)
    [probe] = d["history"]
    assert probe["success"] and probe["source"] == "miss"
    assert "Probe of cluster 'beta'" in probe["log"]
    assert probe["timeout_seconds"] == pytest.approx(119.5)


async def test_unknown_cluster_is_404_plain_text_without_echoing_markup(env):
    for path in ["/clusters/nope", "/api/clusters/nope"]:
        status, text, headers = await env.get(path)
        assert status == 404
        assert headers["Content-Type"].startswith("text/plain")
        assert "unknown cluster 'nope'" in text
    status, text, _ = await env.get("/clusters/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert status == 404
    assert "<script>" not in text and "not a valid cluster name" in text


# --------------------------------------------------------------------------- status


async def test_status_up_then_idle_stays_up_then_stale_while_a_slow_refresh_runs(tmp_path):
    """Between scrapes (TTL over, no refresh running) a cluster stays ``up``; only a
    refresh running past the TTL makes it ``stale``."""
    fleet_yaml = "defaults: {cache_ttl: 200ms, max_staleness: 1h}\n"
    async with started_env(tmp_path, specs()[:1], fleet_yaml) as env:
        await env.get("/probe?cluster=alpha")
        assert (await api(env, "/alpha"))["status"] == "up"
        await wait_for(lambda: env.fleet.cache.latest("alpha") is None)
        idle = await api(env, "/alpha")
        assert (idle["status"], idle["refreshing"]) == ("up", False)
        assert idle["summary"]["volumes"] == 6  # the last good data, still served

        env.sim.set_latency("alpha", 3.0)
        # 0.7 s scrape timeout less the 0.5 s offset: the probe gives up after 0.2 s.
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "0.7"}
        status, text, _ = await env.get("/probe?cluster=alpha", headers=headers)
        assert status == 200 and "probe_success 1" in text  # served from the stale data
        stale = await api(env, "/alpha")
        assert (stale["status"], stale["health"], stale["refreshing"]) == (
            "stale",
            "warning",
            True,
        )
        assert stale["data_age_seconds"] > 0.2
        _, page, _ = await env.get("/clusters/alpha")
        assert "A refresh is running past the cache TTL" in page


async def test_down_and_broken_config(env):
    env.sim.set_fault("alpha", 403)
    await env.get("/probe?cluster=alpha")
    row = await api(env, "/alpha")
    assert (row["status"], row["health"]) == ("down", "critical")
    assert "403" in row["last_error"]
    assert row["resources"]["volumes"]["ok"] is False

    token = env.sim.token_for("beta")
    (env.clusters / "beta.yaml").write_text(
        f"apiVersion: v1\nkind: Config\nusers: [{{name: u, user: {{token: {token}}}}}]\n"
    )
    await env.fleet.reload()
    row = await api(env, "/beta")
    assert (row["status"], row["status_text"], row["health"]) == (
        "broken",
        "broken config",
        "critical",
    )
    assert "beta.yaml" in row["last_error"]
    assert token not in json.dumps(row)
    _, page, _ = await env.get("/clusters/beta")
    assert "broken config" in page and token not in page


async def test_a_down_cluster_shows_its_failed_refresh_past_the_ttl(tmp_path):
    """After the failed result's TTL, the page still has the newest refresh, failed, with
    each resource's error; the status pill says the health in words."""
    fleet_yaml = "defaults: {cache_ttl: 200ms}\n"
    async with started_env(tmp_path, specs()[2:3], fleet_yaml) as env:
        for _ in range(3):
            await env.get("/probe?cluster=gone")
        await wait_for(lambda: env.fleet.cache.latest("gone") is None)
        d = await api(env, "/gone")
        assert (d["status"], d["status_label"]) == ("down", "down · critical")
        assert d["last_refresh"]["ok"] is False
        assert all(not r["ok"] and "cannot connect" in r["error"] for r in d["resources"].values())
        _, page, _ = await env.get("/clusters/gone")
        assert "No refresh" not in page
        assert 'Last refresh (<span class="crit">FAILED</span>' in page
        assert page.count("cannot connect") >= len(d["resources"])
        assert ">down · critical</span>" in page
        assert "calls alike" in page  # the probe log, folded


async def test_overview_is_rendered_by_the_server_too(env):
    """Without JavaScript, / has the table: one row per cluster, worst first, with the
    counts of /api/clusters."""
    await probe_all(env)
    data = await api(env)
    _, page, _ = await env.get("/")
    rows = re.findall(r'<tr class="h-\w+ st-\w+" data-name="([^"]+)">', page)
    assert rows == [c["name"] for c in data["clusters"]]
    beta = next(c for c in data["clusters"] if c["name"] == "beta")
    row = page.split('data-name="beta">', 1)[1].split("</tr>", 1)[0]
    cells = dict(re.findall(r'<td data-key="(\w+)"[^>]*>(.*?)</td>', row))
    assert cells["faulted"] == str(beta["summary"]["volumes_by_robustness"]["faulted"])
    assert cells["unhealthy"] == str(beta["summary"]["volumes_unhealthy"])
    assert cells["missing"] == str(beta["summary"]["replicas_missing"])
    assert f">{beta['status_label']}</span>" in row
    assert "4 clusters: 1 down, 3 up" in page


# --------------------------------------------------------------------------- HTML


class Collect(HTMLParser):
    """Text of elements by class, script sources, inline scripts and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.links: list[str] = []
        self.inline_handlers: list[str] = []
        self.names: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a.get("src"))
        if tag == "link" and a.get("href"):
            self.links.append(a["href"])
        self.inline_handlers += [k for k in a if k.startswith("on") or k == "style"]
        self._stack.append("name" if "name" in (a.get("class") or "").split() else tag)
        if self._stack[-1] == "name":
            self.names.append("")

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "name":
            self.names[-1] += data


def parse(text: str) -> Collect:
    c = Collect()
    c.feed(text)
    return c


async def test_triage_page_shows_the_unhealthy_volumes_with_csp_and_no_inline_script(env):
    await probe_all(env)
    status, text, headers = await env.get("/clusters/beta")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    doc = parse(text)
    assert all(src is not None for src in doc.scripts)  # no inline script at all
    assert doc.inline_handlers == []
    served = served_volumes(env, "beta")
    unhealthy = {n for n, r in served.items() if r != "healthy"}
    table = parse(text[text.index('<table class="triage" id="volumes">') :].split("</table>")[0])
    assert unhealthy <= set(table.names)
    assert not ({n for n, r in served.items() if r == "healthy"} & set(table.names))
    assert "Volumes not healthy (3)" in text
    assert '<details class="probe ok">' in text  # the probe history, with its log
    assert "Probe of cluster &#x27;beta&#x27;" in text


async def test_hostile_names_are_escaped_in_html_and_exact_in_json(env):
    await probe_all(env)
    status, text, _ = await env.get("/clusters/evil")
    assert status == 200
    assert SCRIPT not in text
    assert "pvc-&lt;script&gt;alert(1)&lt;/script&gt;" in text
    doc = parse(text)
    for name in HOSTILE_NAMES:  # every hostile volume is degraded here, so it is listed
        assert name in doc.names, name
    assert HOSTILE_NODE in doc.names
    assert all(src is not None for src in doc.scripts)
    d = await api(env, "/evil")
    assert set(HOSTILE_NAMES) <= {v["name"] for v in d["triage"]["volumes"]}
    assert HOSTILE_NODE in {n["name"] for n in d["triage"]["nodes"]}
    # Labels come from fleet.yaml, still shown as text.
    _, alpha, _ = await env.get("/clusters/alpha")
    assert HOSTILE_LABEL not in alpha and "&quot;&gt;&lt;img src=x" in alpha


async def test_pages_and_api_never_show_a_token(env):
    await probe_all(env)
    bodies = [(await env.get(p))[1] for p in ["/", "/api/clusters", "/static/overview.js"]]
    for name in env.fleet.clusters:
        bodies += [(await env.get(p))[1] for p in [f"/clusters/{name}", f"/api/clusters/{name}"]]
    for name in env.sim.names():
        token = env.sim.token_for(name)
        assert not any(token in b for b in bodies), name


async def test_every_asset_a_page_references_is_served_from_the_package(env):
    await probe_all(env)
    for page in ["/", "/clusters/alpha"]:
        _, text, _ = await env.get(page)
        doc = parse(text)
        refs = [s for s in doc.scripts if s] + doc.links
        assert len(refs) == 3, refs  # script, icon, stylesheet
        for ref in refs:
            url = urljoin(env.url + page, ref)
            assert url.startswith(env.url + "/static/"), url  # nothing from outside
            async with env.session.get(url) as r:
                assert r.status == 200, url
                body = await r.read()
                assert body
                expected = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
                assert r.content_type == expected[url.split("?")[0].rsplit(".", 1)[1]]
    for bad in ["/static/nope.js", "/static/..%2Fpages.py", "/static/%2E%2E%2F__init__.py"]:
        status, _, _ = await env.get(bad)
        assert status == 404, bad


def test_el_and_render_escape_everything_that_is_not_html():
    out = pages.el("td", '<b>"x"</b>', title='a"b<c>', class_="name", hidden=True, id=None)
    assert (
        out
        == '<td title="a&quot;b&lt;c&gt;" class="name" hidden>&lt;b&gt;&quot;x&quot;&lt;/b&gt;</td>'
    )
    assert pages.el("p", pages.Html("<i>ok</i>")) == "<p><i>ok</i></p>"
    with pytest.raises(KeyError):
        pages.render("cluster.html", name="x")  # strict: every placeholder must be given


async def test_overview_of_500_clusters_is_quick_and_sorted_worst_first(tmp_path):
    fleet = await standin_fleet(tmp_path, 500)
    derived = pages._Derived()
    t0 = time.perf_counter()
    data = pages.fleet_overview(fleet, derived)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    pages.fleet_overview(fleet, derived)
    again = time.perf_counter() - t0
    assert len(data["clusters"]) == 500
    assert first < 2.0 and again < 0.5, (first, again)  # summaries are computed once
    # Every 40th never probed (12), every 25th down unless never probed (20 - 2).
    assert data["by_status"] == {"up": 470, "down": 18, "unprobed": 12}
    healths = [c["health"] for c in data["clusters"]]
    tiers = [pages.HEALTH_TIER[h] for h in healths]
    assert tiers == sorted(tiers, reverse=True)
    assert len(json.dumps(data)) < 1_000_000


# --------------------------------------------------------------------------- terminal


def run_triage(url: str, cluster: str | None, **kw) -> tuple[int, str]:
    out = io.StringIO()
    args = Namespace(
        cluster=cluster, url=url, timeout=5.0, logs=False, json=False, color="auto", **kw
    )
    code = triage.cmd_triage(args, out)
    return code, out.getvalue()


async def test_triage_cli_renders_the_cluster_and_the_fleet(env):
    await probe_all(env)
    code, text = await asyncio.to_thread(run_triage, env.url, "beta")
    assert code == 1  # beta has a faulted volume: it needs a person
    assert "\x1b[" not in text  # not a terminal: no colour
    assert "beta  UP (critical)" in text
    assert "VOLUMES NOT HEALTHY (3)" in text
    for name in (n for n, r in served_volumes(env, "beta").items() if r != "healthy"):
        assert name in text
    assert "RECENT PROBES (1, newest first)" in text

    code, text = await asyncio.to_thread(run_triage, env.url, None)
    assert code == 1
    lines = text.splitlines()
    assert lines[0] == "4 clusters: 3 up, 1 down"
    assert re.match(r"STATUS\s+HEALTH\s+CLUSTER", lines[1])
    assert lines[-1].split()[:3] == ["up", "ok", "alpha"]  # worst first, so alpha is last


async def test_triage_cli_escapes_control_characters_and_reports_errors(env):
    await probe_all(env)
    code, text = await asyncio.to_thread(run_triage, env.url, "evil")
    assert "pvc-new\\nline" in text  # the newline in the name is shown, not obeyed
    assert "pvc-new\nline" not in text
    assert SCRIPT in text  # a terminal does not run markup; shown as is
    code, text = await asyncio.to_thread(run_triage, env.url, "nope")
    assert code == 2 and text == ""
    code, _ = await asyncio.to_thread(run_triage, "http://127.0.0.1:9", "alpha")
    assert code == 2


async def test_triage_cli_takes_its_width_from_columns_when_not_on_a_terminal(env, monkeypatch):
    await probe_all(env)
    widths = {}
    for columns in (110, 250):
        monkeypatch.setenv("COLUMNS", str(columns))
        _, text = await asyncio.to_thread(run_triage, env.url, "beta")
        table = text.split("VOLUMES NOT HEALTHY", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
        assert re.match(
            r"HEALTH +VOLUME / REPLICA +PVC +STATE +REPL/MODE +REBUILD +NODE +"
            r"LAST BACKUP +WHY$",
            table[0],
        )  # no header is ever cut
        widths[columns] = max(triage.width(line) for line in table)
    assert widths[110] <= 110 < widths[250] <= 250
    # What the counts say is the summary's, the same numbers as the pages'.
    d = await api(env, "/beta")
    s = d["summary"]
    assert f"replicas missing {s['replicas_missing']}" in text
    assert f"not healthy {s['volumes_unhealthy']}" in text


def test_clean_and_width():
    assert triage.clean("a\nb\x1b[31mc\u202e") == "a\\nb\\x1b[31mc\\u202e"
    assert triage.width("卷🚀a") == 5
    assert triage.cut("ünïcødé-卷-🚀-long", 10) == "ünïcødé-…"
    assert triage.cut("short", 10) == "short"
