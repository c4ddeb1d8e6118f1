"""The exporter end to end: real sockets, real TLS, the simulated fleet behind it."""

import asyncio
import gzip
import re
import shutil
from collections.abc import AsyncIterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from fleet_exporter.credentials import redact

from .conftest import Env, gunzip_all, samples, small_fleet_specs, started_env, value, wait_for

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


async def test_healthy_cluster(env):
    status, smp, _text = await env.probe("alpha")
    assert status == 200
    assert value(smp, "probe_success") == 1
    assert value(smp, "longhorn_up") == 1
    assert value(smp, "probe_timeout_seconds") == 119.5  # no header: blackbox's 120 - 0.5
    assert 0 < value(smp, "probe_duration_seconds") < 10
    # Every series carries cluster="alpha", and nothing else names a cluster.
    assert all(dict(lbl).get("cluster") == "alpha" for (_n, lbl) in smp)
    healthy = [v for (n, _l), v in smp.items() if n == "longhorn_volume_healthy"]
    assert len(healthy) == 6
    assert value(smp, "longhorn_volume_robustness", state="healthy", volume=_volumes(smp)[0]) == 1
    assert value(smp, "longhorn_exporter_list_success", resource="snapshots") == 1
    assert value(smp, "longhorn_node_count_total") == 3


def _volumes(smp) -> list[str]:
    return sorted({dict(lbl)["volume"] for (n, lbl) in smp if n == "longhorn_volume_healthy"})


async def test_degraded_cluster_shows_degraded_and_faulted_volumes(env):
    status, smp, _ = await env.probe("beta")
    assert status == 200
    assert value(smp, "probe_success") == 1
    states = {dict(lbl)["state"]: 0 for (n, lbl) in smp if n == "longhorn_volume_robustness"}
    assert set(states) == {"healthy", "degraded", "faulted", "unknown"}
    degraded = sum(
        v
        for (n, lbl), v in smp.items()
        if n == "longhorn_volume_robustness" and dict(lbl)["state"] == "degraded"
    )
    faulted = sum(
        v
        for (n, lbl), v in smp.items()
        if n == "longhorn_volume_robustness" and dict(lbl)["state"] == "faulted"
    )
    assert (degraded, faulted) == (2, 1)
    unhealthy = sum(1 for (n, _l), v in smp.items() if n == "longhorn_volume_healthy" and v == 0)
    assert unhealthy == 3


async def test_forbidden_resource_costs_only_its_own_metrics(env):
    status, smp, _ = await env.probe("gamma")
    assert status == 200
    assert value(smp, "probe_success") == 1
    assert value(smp, "longhorn_exporter_list_success", resource="snapshots") == 0
    assert value(smp, "longhorn_exporter_list_success", resource="volumes") == 1
    assert value(smp, "longhorn_exporter_scrape_errors_total", resource="snapshots") == 1
    assert not [n for (n, _l) in smp if n.startswith("longhorn_volume_snapshot")]
    assert len([n for (n, _l) in smp if n == "longhorn_volume_capacity_bytes"]) == 5
    _, text, _ = await env.get("/probe?cluster=gamma&debug=true")
    assert "snapshots" in text
    assert "403" in text


async def test_unknown_missing_and_repeated_names_cause_no_upstream_call(env):
    before = env.upstream_requests()
    for query in [
        "cluster=nope",
        "cluster=..%2Falpha",
        "cluster=alpha%00",
        "",
        "cluster=alpha&cluster=beta",
        "cluster=alpha&target=alpha",
        "cluster=" + "a" * 5000,
    ]:
        status, text, _ = await env.get(f"/probe?{query}")
        assert status == 400, query
        assert text.count("\n") == 1, "a one-line reason"
    assert env.upstream_requests() == before


async def test_target_alias_for_the_operator_probe_resource(env):
    status, text, _ = await env.get("/probe?target=delta")
    assert status == 200
    assert value(samples(text), "probe_success") == 1


async def test_hundred_concurrent_probes_make_one_round_of_calls(env):
    before = {r: env.sim.requests("alpha", r) for r in ("volumes", "snapshots", "nodes")}
    results = await asyncio.gather(*(env.probe("alpha") for _ in range(100)))
    assert {value(smp, "probe_success") for _s, smp, _t in results} == {1}
    for resource, n in before.items():
        assert env.sim.requests("alpha", resource) == n + 1, resource
    # Within the TTL, more probes make no calls at all.
    await env.probe("alpha")
    assert env.sim.requests("alpha", "volumes") == before["volumes"] + 1


@pytest.mark.parametrize("metadata_first", [False, True])
async def test_pagination_reads_every_object(tmp_path, metadata_first):
    """Pages are requested ahead on a continue token guessed from the body's tail; a
    server that writes ``metadata`` first allows no guess, and the lists still come
    whole, one request per page, none twice."""
    from simulator.fleet import ClusterSpec

    from .conftest import started_env

    specs = [ClusterSpec(name="big", volumes=23, nodes=2, seed=9, metadata_first=metadata_first)]
    async with started_env(tmp_path, specs, "defaults: {page_size: 5}\n") as e:
        _, smp, _ = await e.probe("big")
        assert len([n for (n, _l) in smp if n == "longhorn_volume_healthy"]) == 23
        assert value(smp, "longhorn_exporter_list_objects", resource="volumes") == 23
        assert e.sim.requests("big", "volumes") == 5  # 23 items, 5 per page
        snapshots = e.sim.cluster("big").store.count("snapshots")
        assert value(smp, "longhorn_exporter_list_objects", resource="snapshots") == snapshots
        assert e.sim.requests("big", "snapshots") == -(-snapshots // 5)


async def test_unreachable_cluster_fails_alone(env):
    (env.clusters / "alpha.yaml").write_text(
        (env.clusters / "alpha.yaml")
        .read_text()
        .replace(env.sim.url_for("alpha"), "https://127.0.0.1:9/x")
    )
    await env.fleet.reload()
    status, smp, _ = await env.probe("alpha")
    assert status == 200
    assert value(smp, "probe_success") == 0
    assert value(smp, "longhorn_up") == 0
    _, text, _ = await env.get("/probe?cluster=alpha&debug=true")
    assert "cannot connect" in text
    # Every attempt of every list failed alike: one line says so, with the count.
    calls = text.split("Upstream calls:", 1)[1].split("Resources:", 1)[0].strip().splitlines()
    assert len(calls) == 1, calls
    assert re.search(r"x\d+ calls alike, .*cannot connect.*\(resources: volumes, ", calls[0])
    _, other, _ = await env.probe("delta")
    assert value(other, "probe_success") == 1


async def test_broken_kubeconfig_is_listed_and_explained(env):
    (env.clusters / "delta.yaml").write_text("this: [is not a kubeconfig")
    await env.fleet.reload()
    status, smp, _ = await env.probe("delta")
    assert (status, value(smp, "probe_success")) == (200, 0)
    _, text, _ = await env.get("/probe?cluster=delta&debug=true")
    assert "delta.yaml" in text
    _, targets, _ = await env.get("/targets")
    assert '"delta"' in targets
    _, metrics, _ = await env.get("/metrics")
    assert 'fleet_exporter_cluster_config_ok{cluster="delta"} 0.0' in metrics
    assert 'fleet_exporter_clusters{state="broken"} 1.0' in metrics
    _, ok, _ = await env.probe("alpha")
    assert value(ok, "probe_success") == 1


async def test_openmetrics_and_gzip(env):
    headers = {
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        "Accept-Encoding": "gzip",
    }
    async with env.session.get(
        env.url + "/probe?cluster=alpha", headers=headers, auto_decompress=False
    ) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert r.headers["Content-Encoding"] == "gzip"
        raw = await r.read()
    text = gunzip_all(raw).decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    families = {f.name: f for f in om_parse(text)}
    assert families["probe_success"].samples[0].value == 1
    assert families["longhorn_exporter_scrape_errors"].type == "counter"
    # A second request reuses the once-compressed body: same bytes after the head.
    async with env.session.get(
        env.url + "/probe?cluster=alpha", headers=headers, auto_decompress=False
    ) as r:
        again = await r.read()
    assert gzip.decompress(again).split(b"\n", 12)[-1] == gzip.decompress(raw).split(b"\n", 12)[-1]


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
async def test_probe_body_is_sent_with_its_length_and_headers(env, encoding):
    """The answer goes out as its cached pieces (app.Parts), not one joined buffer: the
    length, the middleware's headers and HEAD must still be right."""
    headers = {"Accept-Encoding": encoding}
    url = env.url + "/probe?cluster=alpha"
    async with env.session.get(url, headers=headers, auto_decompress=False) as r:
        raw = await r.read()
        assert int(r.headers["Content-Length"]) == len(raw)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    # gzip.decompress reads every member and raises on a cut one; text ends with a newline.
    text = gzip.decompress(raw) if encoding == "gzip" else raw
    assert text.endswith(b"\n")
    assert value(samples(text.decode()), "probe_success") == 1
    async with env.session.head(url, headers=headers, auto_decompress=False) as r:
        assert r.status == 200
        assert await r.read() == b""


async def test_plain_text_by_default(env):
    _status, text, headers = await env.get("/probe?cluster=alpha")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in text


async def test_timeout_header_and_stale_data(env):
    # Fill the cache, then make the cluster slow and let the TTL pass.
    await env.probe("delta")
    env.fleet.cache.forget("delta")
    await env.probe("delta")
    env.sim.set_latency("delta", 1.5)
    rt = env.fleet.clusters["delta"]
    env.fleet.cache._fresh.pop("delta")  # TTL passed
    status, smp, _ = await env.probe("delta", headers={TIMEOUT_HEADER: "0.8"})
    assert status == 200
    assert value(smp, "probe_timeout_seconds") == pytest.approx(0.3)
    assert value(smp, "probe_success") == 1  # stale but within max_staleness
    assert value(smp, "probe_duration_seconds") < 0.6
    assert env.fleet.cache.refreshing("delta")
    await wait_for(lambda: not env.fleet.cache.refreshing("delta"), timeout=15)
    _, fresh, _ = await env.probe("delta", headers={TIMEOUT_HEADER: "0.8"})
    assert value(fresh, "longhorn_exporter_data_age_seconds") < 5
    assert rt.history.records()[0].source == "hit"
    assert any(r.source == "stale" for r in rt.history.records())


async def test_malformed_timeout_header_is_a_clear_400(env):
    status, text, _ = await env.get("/probe?cluster=alpha", headers={TIMEOUT_HEADER: "soon"})
    assert status == 400
    assert TIMEOUT_HEADER in text


async def test_no_data_in_time_is_probe_success_0(env):
    env.sim.set_latency("delta", 2.0)
    status, smp, _ = await env.probe("delta", headers={TIMEOUT_HEADER: "0.7"})
    assert (status, value(smp, "probe_success"), value(smp, "longhorn_up")) == (200, 0, 0)


async def test_token_rotation_is_survived_by_reloading_on_401(env):
    await env.probe("alpha")
    env.sim.rotate_token("alpha")
    env.sim.write_kubeconfigs(env.clusters)  # the Secret behind the mount was updated
    env.fleet.cache.forget("alpha")
    _, smp, _ = await env.probe("alpha")
    assert value(smp, "probe_success") == 1
    _, metrics, _ = await env.get("/metrics")
    assert 'code="401",resource=' in metrics or 'code="401"' in metrics


async def test_self_metrics_and_targets(env):
    await env.probe("alpha")
    await env.get("/probe?cluster=nope")
    _, metrics, _ = await env.get("/metrics")
    for line in (
        'fleet_exporter_cluster_configured{cluster="beta"} 1.0',
        'fleet_exporter_clusters{state="configured"} 4.0',
        'fleet_exporter_probes_total{cluster="alpha",result="success"} 1.0',
        'fleet_exporter_requests_rejected_total{reason="unknown_cluster"} 1.0',
        'fleet_exporter_cache_requests_total{cluster="alpha",result="miss"} 1.0',
        'fleet_exporter_upstream_requests_total{cluster="alpha",code="200"} 10.0',
        'fleet_exporter_upstream_resource_requests_total{code="200",resource="volumes"} 1.0',
        "fleet_exporter_probe_duration_seconds_count 1.0",
    ):
        assert line in metrics, line
    assert "longhorn_volume" not in metrics
    _status, body, headers = await env.get("/targets")
    assert headers["Content-Type"].startswith("application/json")
    import json

    groups = json.loads(body)
    assert sorted(g["targets"][0] for g in groups) == ["alpha", "beta", "delta", "gamma"]


async def test_health_and_readiness(env):
    assert (await env.get("/healthz"))[0] == 200
    status, text, _ = await env.get("/-/ready")
    assert status == 200
    assert "4 clusters" in text


@pytest.fixture
async def lifecycle_env(tmp_path) -> AsyncIterator[Env]:
    """``env`` with ``--web.enable-lifecycle``: POST /-/reload reloads."""
    async with started_env(tmp_path, small_fleet_specs(), enable_lifecycle=True) as e:
        yield e


async def test_reload_adds_removes_and_keeps_cache(lifecycle_env):
    env = lifecycle_env
    await env.probe("alpha")
    calls = env.sim.requests("alpha", "volumes")
    shutil.copy(env.clusters / "delta.yaml", env.clusters / "epsilon.yaml")
    (env.clusters / "beta.yaml").unlink()
    async with env.session.post(env.url + "/-/reload") as r:
        assert r.status == 200
        assert "1 added, 1 removed" in await r.text()
    assert (await env.probe("beta"))[0] == 400
    assert value((await env.probe("epsilon"))[1], "probe_success") == 1
    await env.probe("alpha")
    assert env.sim.requests("alpha", "volumes") == calls  # unchanged cluster kept its cache


async def test_failed_reload_keeps_running_config(lifecycle_env):
    env = lifecycle_env
    (env.clusters / "fleet.yaml").write_text("defaults: {cache_tll: 3}\n")
    async with env.session.post(env.url + "/-/reload") as r:
        assert r.status == 500
        assert "cache_tll: unknown key" in await r.text()
    assert value((await env.probe("alpha"))[1], "probe_success") == 1
    _, metrics, _ = await env.get("/metrics")
    assert "fleet_exporter_config_last_reload_successful 0.0" in metrics


async def test_reload_over_http_is_off_without_the_flag(env):
    shutil.copy(env.clusters / "delta.yaml", env.clusters / "epsilon.yaml")
    async with env.session.post(env.url + "/-/reload") as r:
        assert r.status == 403
        assert "start with --web.enable-lifecycle, or send SIGHUP" in await r.text()
    assert (await env.probe("epsilon"))[0] == 400  # nothing was reloaded


# What headless Chromium sends for a form a page on http://localhost:8000 posts to the
# exporter (tests/browser/test_pages_browser.py sees the real thing); then each signal
# alone, as other browsers or plain-HTTP deployments (no Sec-Fetch-*) send them.
CHROMIUM_FORM = {
    "Origin": "http://localhost:8000",
    "Referer": "http://localhost:8000/",
    "Content-Type": "application/x-www-form-urlencoded",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Upgrade-Insecure-Requests": "1",
    "Cache-Control": "max-age=0",
}
CROSS_ORIGIN = {
    "Chromium form": (CHROMIUM_FORM, "Sec-Fetch-Site is cross-site"),
    "same site, another port": ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site is same-site"),
    "Origin only": ({"Origin": "http://evil.example"}, "Origin does not match Host"),
    "sandboxed page": ({"Origin": "null"}, "Origin does not match Host"),
    "form, no Origin": ({"Content-Type": "text/plain"}, "a form's content type (text/plain)"),
    "multipart form": (
        {"Content-Type": "multipart/form-data; boundary=x"},
        "a form's content type (multipart/form-data)",
    ),
}


@pytest.mark.parametrize("case", list(CROSS_ORIGIN))
async def test_cross_origin_reload_is_refused(lifecycle_env, case):
    env = lifecycle_env
    headers, reason = CROSS_ORIGIN[case]
    shutil.copy(env.clusters / "delta.yaml", env.clusters / "epsilon.yaml")
    async with env.session.post(env.url + "/-/reload", headers=headers, data=b"a=1") as r:
        assert r.status == 403
        assert await r.text() == (
            f"Forbidden: cross-origin request refused ({reason}); "
            "POST /-/reload from a script or curl instead\n"
        )
    assert (await env.probe("epsilon"))[0] == 400  # nothing was reloaded


async def test_same_origin_and_script_reloads_pass(lifecycle_env):
    env = lifecycle_env
    for headers in (
        {},  # curl -X POST
        {"Origin": env.url, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "none"},  # typed by a person, not sent by a page
    ):
        async with env.session.post(env.url + "/-/reload", headers=headers) as r:
            assert r.status == 200, (headers, await r.text())


async def test_no_credential_in_any_output(env):
    tokens = [env.sim.token_for(n) for n in ("alpha", "beta", "gamma", "delta")]
    bodies = []
    for name in ("alpha", "beta", "gamma", "delta"):
        bodies.append((await env.get(f"/probe?cluster={name}&debug=true"))[1])
        bodies.append((await env.get(f"/probe?cluster={name}"))[1])
    for path in ("/", "/metrics", "/targets"):
        bodies.append((await env.get(path))[1])
    for token in tokens:
        assert all(token not in b for b in bodies)
        assert redact(token) == "<redacted>"


async def test_whole_probe_answer_passes_promtool(env):
    """Only Longhorn's own `longhorn_node_count_total` (a gauge named like a counter) is
    allowed to draw a lint message; see docs/metrics.md."""
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: .ci/run installs Debian's prometheus package"
    for cluster in ("alpha", "beta", "gamma"):
        _, text, _ = await env.get(f"/probe?cluster={cluster}")
        r = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        problems = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        assert problems == [
            'longhorn_node_count_total non-counter metrics should not have "_total" suffix'
        ], problems


async def test_probe_limit_answers_503_at_once(tmp_path):
    from .conftest import small_fleet_specs, started_env

    async with started_env(
        tmp_path, small_fleet_specs(), "server: {max_concurrent_probes: 2}\n"
    ) as e:
        e.sim.set_latency("delta", 1.0)
        results = await asyncio.gather(*(e.get("/probe?cluster=delta") for _ in range(6)))
        statuses = sorted(status for status, _t, _h in results)
        assert statuses == [200, 200, 503, 503, 503, 503]
        refused = next(text for status, text, _h in results if status == 503)
        assert "too many probes in flight (limit 2)" in refused
        _, metrics, _ = await e.get("/metrics")
        assert 'fleet_exporter_requests_rejected_total{reason="overloaded"} 4.0' in metrics
        assert "fleet_exporter_probes_in_flight_limit 2.0" in metrics  # a number wins


async def test_request_bodies_are_bounded(env):
    async with env.session.post(env.url + "/-/reload", data=b"x" * (1024 * 1024)) as r:
        assert r.status == 413


async def test_probes_keep_answering_while_clusters_change(env):
    """Add, remove and break kubeconfigs while another cluster is probed continuously."""
    stop = asyncio.Event()
    answers: list[float | None] = []

    async def keep_probing():
        while not stop.is_set():
            status, smp, _ = await env.probe("alpha")
            answers.append(value(smp, "probe_success") if status == 200 else None)
            env.fleet.cache.forget("alpha")  # every probe goes upstream

    prober = asyncio.create_task(keep_probing())
    original = (env.clusters / "beta.yaml").read_text()
    for step in range(3):
        shutil.copy(env.clusters / "delta.yaml", env.clusters / f"new-{step}.yaml")
        await env.fleet.reload()
        (env.clusters / "beta.yaml").write_text("garbage: [")
        await env.fleet.reload()
        assert env.fleet.clusters["beta"].load_error
        (env.clusters / f"new-{step}.yaml").unlink()
        (env.clusters / "beta.yaml").write_text(original)
        await env.fleet.reload()
    await wait_for(lambda: len(answers) >= 10)
    stop.set()
    await prober
    assert answers
    assert set(answers) == {1.0}, answers
    assert sorted(env.fleet.clusters) == ["alpha", "beta", "delta", "gamma"]
    assert value((await env.probe("beta"))[1], "probe_success") == 1


async def test_an_unexpected_error_costs_only_that_clusters_probe(env, monkeypatch, caplog):
    import fleet_exporter.fleet as fleet_module

    real = fleet_module.refresh

    async def broken(target, session, on_call):
        if target.name == "beta":
            raise KeyError("a field no Longhorn version ever had")
        return await real(target, session, on_call)

    monkeypatch.setattr(fleet_module, "refresh", broken)
    status, smp, _ = await env.probe("beta")
    assert (status, value(smp, "probe_success"), value(smp, "longhorn_up")) == (200, 0, 0)
    _, debug, _ = await env.get("/probe?cluster=beta&debug=true")
    assert "internal error: KeyError" in debug
    assert "Traceback" not in debug
    assert "refresh failed unexpectedly" in caplog.text
    assert value((await env.probe("alpha"))[1], "probe_success") == 1


async def test_free_heap_pages_are_released_when_refreshes_go_idle(env, monkeypatch):
    """After enough list bytes, the C heap is trimmed once no refresh runs (glibc's
    malloc_trim here), not while one is still running."""
    import platform

    import fleet_exporter.fleet as fleet_module
    from fleet_exporter import knobs

    if platform.libc_ver()[0] == "glibc":
        assert knobs._MALLOC_TRIM is not None  # found, so the release does something
    knobs.release_free_memory()
    running: list[bool] = []
    monkeypatch.setattr(fleet_module, "TRIM_AFTER_BYTES", 1)
    monkeypatch.setattr(
        fleet_module, "release_free_memory", lambda: running.append(env.fleet._refreshing > 0)
    )
    env.sim.set_latency("beta", 0.2)  # still refreshing when alpha's refresh ends
    await asyncio.gather(env.probe("alpha"), env.probe("beta"))
    assert running == [False]  # once, after beta, when nothing ran any more
    monkeypatch.setattr(fleet_module, "TRIM_AFTER_BYTES", 1 << 40)
    env.fleet.cache.forget("alpha")
    await env.probe("alpha")
    assert running == [False]  # too few bytes since: no release
