"""No edit can take the service down, and a start that cannot go on says why in one line.

Real ``fleet-exporter serve`` and ``check`` processes over real sockets: a fleet.yaml entry
without a kubeconfig, a bad per-cluster key, a broken kubeconfig and files that are never
clusters each cost only themselves and are reported once, precisely; the errors that leave
nothing to serve end the process with exit code 2 and one line."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys

import pytest

from simulator.fleet import ClusterSpec
from simulator.server import SimulatedFleet

from .conftest import samples, small_fleet_specs, started_env, value
from .kubelet import REPO, Exporter

CLI = [sys.executable, "-m", "fleet_exporter"]

STALE = """
clusters:
  a: {labels: {env: prod}}
  b: {timout: 3s}
  gone: {cache_ttl: 1m}
"""
NEVER_CLUSTERS = ("fleet.example.yaml", "fleet.yml", "x.yaml.bak", ".hidden.yaml", "y.yaml~")


async def test_every_problem_costs_only_itself_and_is_said_once(tmp_path):
    specs = [ClusterSpec(name=n, volumes=2, nodes=1, seed=i) for i, n in enumerate("ab")]
    async with SimulatedFleet(specs) as sim:
        clusters = tmp_path / "clusters"
        written = sim.write_kubeconfigs(clusters)
        (clusters / "fleet.yaml").write_text(STALE)
        (clusters / "broken.yaml").write_text("this: [is not a kubeconfig")
        (clusters / "broken.yaml").chmod(0o600)
        for name in NEVER_CLUSTERS:  # each a working kubeconfig: only the name says no
            shutil.copy(written["a"], clusters / name)
        async with Exporter(clusters, "--web.enable-lifecycle") as e:
            _, body = await e.get("/targets")
            assert sorted(g["targets"][0] for g in json.loads(body)) == ["a", "b", "broken"]
            assert await _probe(e, "a") == 1
            for _ in range(2):  # broken clusters answer, and are not logged at every probe
                assert await _probe(e, "b") == 0
                assert await _probe(e, "broken") == 0
            _, debug = await e.get("/probe?cluster=b&debug=true")
            assert "fleet.yaml: clusters.b.timout: unknown key" in debug

            _, text = await e.get("/api/clusters")
            api = json.loads(text)
            rows = {r["name"]: r for r in api["clusters"]}
            assert rows["a"]["labels"] == {"env": "prod"}
            assert rows["b"]["status"] == "broken"
            assert rows["b"]["last_error"].startswith("fleet.yaml: clusters.b.timout: unknown key")
            assert rows["broken"]["status"] == "broken"
            assert rows["broken"]["last_error"].startswith(
                f"kubeconfig {clusters / 'broken.yaml'}: not valid YAML"
            )
            assert [(p["what"], p["reason"]) for p in api["problems"]] == [
                ("fleet.yaml: clusters.gone", "no_kubeconfig")
            ]
            ignored = {i["what"]: i["reason"] for i in api["ignored"]}
            assert ignored == {
                "fleet.example.yaml": "reserved",
                "fleet.yml": "reserved",
                "x.yaml.bak": "backup",
                ".hidden.yaml": "hidden",
                "y.yaml~": "backup",
            }
            status, page = await e.get("/clusters/b")
            assert status == 200 and "clusters.b.timout: unknown key" in page

            m = "fleet_exporter_config_problems"
            assert await e.metric(m, reason="no_kubeconfig") == 1
            assert await e.metric(m, reason="invalid_name") == 0
            ok = "fleet_exporter_cluster_config_ok"
            assert [await e.metric(ok, cluster=n) for n in ("a", "b", "broken")] == [1, 0, 0]
            assert await e.metric("fleet_exporter_clusters", state="broken") == 2

            # POST /-/reload with the stale entry still there is a success, not a 500.
            async with e.session.post(e.url + "/-/reload") as r:
                assert r.status == 200, await r.text()
        # Each problem in the log exactly once, in one line, with no doubled prefix.
        assert len(e.log("fleet.yaml: clusters.gone: no kubeconfig file")) == 1
        assert len(e.log("cluster b: fleet.yaml: clusters.b.timout: unknown key")) == 1
        # (web/probe logs each failed probe at info level, as blackbox's prober logger does.)
        said = [ln for ln in e.log("broken.yaml") if "level=info" not in ln]
        assert len(said) == 1 and "level=error" in said[0], said
        assert not e.log("kubeconfig broken.yaml: kubeconfig")
        for name in NEVER_CLUSTERS:
            assert len(e.log(f"{name}: ")) == 1, name
        assert e.proc.returncode == 0

        check = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "check", "--clusters", str(clusters), "--timeout", "20"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert any(ln.startswith("ok    a ") for ln in lines)
    assert any(ln.startswith("FAIL  b ") and "clusters.b.timout: unknown key" in ln for ln in lines)
    assert any(ln.startswith("FAIL  broken ") and "not valid YAML" in ln for ln in lines)
    assert any(ln.startswith("FAIL  fleet.yaml: clusters.gone ") for ln in lines)
    for name in NEVER_CLUSTERS:
        assert any(ln.startswith(f"skip  {name} ") for ln in lines), name
    assert lines[-1] == "1/4 clusters ok"
    # check prints each outcome itself: the log does not say them again.
    output = check.stdout + check.stderr
    assert output.count("clusters.b.timout") == 1
    assert output.count("not valid YAML") == 1


async def _probe(e: Exporter, cluster: str) -> float | None:
    status, text = await e.get(f"/probe?cluster={cluster}")
    assert status == 200
    return value(samples(text), "probe_success")


async def test_removing_a_kubeconfig_before_its_entry_keeps_serving(tmp_path):
    """The usual order of two edits by two people: the file goes, the entry stays. Before,
    this reload answered 500 and a restart refused to start."""
    yaml = "clusters:\n  beta: {cache_ttl: 1m}\n"
    async with started_env(tmp_path, small_fleet_specs(), yaml, enable_lifecycle=True) as env:
        (env.clusters / "beta.yaml").unlink()
        async with env.session.post(env.url + "/-/reload") as r:
            assert r.status == 200
            assert "1 removed" in await r.text()
        assert sorted(env.fleet.clusters) == ["alpha", "delta", "gamma"]
        assert value((await env.probe("alpha"))[1], "probe_success") == 1
        _, body, _ = await env.get("/api/clusters")
        assert json.loads(body)["problems"][0]["what"] == "fleet.yaml: clusters.beta"


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "serve", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "address in use",
            "cannot start: cannot listen on 127.0.0.1:{port}: Address already in use",
        ),
        (
            "unknown host",
            "cannot start: cannot listen on no-such-host.invalid:9265: cannot resolve",
        ),
        ("missing directory", "cannot start: {clusters}/nope: clusters directory does not exist"),
        ("bad server section", "cannot start: fleet.yaml: server.max_concurrent_probes: expected"),
        ("bad defaults section", "cannot start: fleet.yaml: defaults.cache_tll: unknown key"),
        ("unreadable web config", "cannot start: web config {clusters}/web.yml"),
    ],
)
def test_a_start_that_cannot_go_on_says_why_in_one_line(tmp_path, busy_port, case, expected):
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "a.yaml").write_text("apiVersion: v1\nkind: Config\n")
    args = ["--clusters", str(clusters), "--listen", "127.0.0.1:0"]
    if case == "address in use":
        args[3] = f"127.0.0.1:{busy_port}"
    elif case == "unknown host":
        args[3] = "no-such-host.invalid:9265"
    elif case == "missing directory":
        args[1] = str(clusters / "nope")
    elif case == "bad server section":
        (clusters / "fleet.yaml").write_text("server: {max_concurrent_probes: many}\n")
    elif case == "bad defaults section":
        (clusters / "fleet.yaml").write_text("defaults: {cache_tll: 5s}\n")
    elif case == "unreadable web config":
        args += ["--web.config.file", str(clusters / "web.yml")]
    r = serve(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr  # no traceback, no "listening", no "Unclosed ..."
    assert "level=error" in lines[0]
    assert expected.format(port=busy_port, clusters=clusters) in lines[0]
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--listen", "nonsense", "invalid listen address 'nonsense'"),
        ("--config.watch-interval", "soon", "invalid interval 'soon'"),
    ],
)
def test_a_bad_command_line_is_exit_code_2(flag, value, message):
    r = serve(flag, value)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
