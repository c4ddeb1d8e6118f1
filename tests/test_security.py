"""The real `fleet-exporter serve` behind a web config (TLS, client certificates, basic
auth), and its graceful shutdown, run as a separate process against the simulated fleet."""

import asyncio
import html
import signal
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import yaml

from simulator.server import SimulatedFleet
from simulator.tls import CertificateAuthority

from .conftest import samples, small_fleet_specs, value, wait_for

PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """``fleet-exporter serve`` as a child process; its log is kept for inspection."""

    def __init__(self, clusters: Path, *extra: str):
        self.port = free_port()
        self.log = clusters.parent / "exporter.log"
        self.args = [
            sys.executable,
            "-m",
            "fleet_exporter.cli",
            "serve",
            "--clusters",
            str(clusters),
            "--listen",
            f"127.0.0.1:{self.port}",
            *extra,
        ]

    async def __aenter__(self):
        self.logfile = self.log.open("w")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=self.logfile, stderr=self.logfile
        )
        return self

    async def __aexit__(self, *exc):
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.logfile.close()


@pytest.fixture
async def sim(tmp_path):
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    async with SimulatedFleet(small_fleet_specs()) as fleet:
        fleet.write_kubeconfigs(clusters)
        yield fleet, clusters


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


def tls_material(tmp_path: Path):
    ca = CertificateAuthority("exporter test CA")
    server = ca.issue_server(("localhost", "127.0.0.1"))
    client = ca.issue_client("prometheus")
    files = {}
    for name, text in {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_pem,
        "server.key": server.key_pem,
        "client.pem": client.cert_pem,
        "client.key": client.key_pem,
    }.items():
        (tmp_path / name).write_text(text)
        files[name] = tmp_path / name
    return files


async def wait_ready(url: str, ssl_ctx=None, timeout: float = 30) -> None:
    async def ready():
        try:
            async with aiohttp.ClientSession() as s, s.get(url + "/-/ready", ssl=ssl_ctx) as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ready, timeout=timeout, interval=0.1)


async def test_tls_and_basic_auth(sim, tmp_path):
    _fleet, clusters = sim
    f = tls_material(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {f['server.pem']}\n  key_file: {f['server.key']}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    async with Exporter(clusters, "--web.config.file", str(config)) as exp:
        url = f"https://127.0.0.1:{exp.port}"
        trusted = ssl.create_default_context(cafile=f["ca.pem"])
        await wait_ready(url, trusted)
        good = basic("prometheus", PASSWORD)
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/probe?cluster=alpha", ssl=trusted, headers=good) as r:
                assert r.status == 200
                assert value(samples(await r.text()), "probe_success") == 1
            for auth in ({}, basic("prometheus", "wrong"), basic("nobody", PASSWORD)):
                async with s.get(url + "/probe?cluster=alpha", ssl=trusted, headers=auth) as r:
                    assert r.status == 401
                    assert "probe_success" not in await r.text()
            async with s.get(url + "/metrics", ssl=trusted) as r:
                assert r.status == 401
            async with s.get(url + "/healthz", ssl=trusted) as r:
                assert r.status == 200  # kubelet probes cannot send credentials
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get(url + "/healthz"):  # system trust store: not our CA
                    pass
            with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port is dropped
                async with s.get(f"http://127.0.0.1:{exp.port}/healthz") as r:
                    await r.read()
    log = exp.log.read_text()
    assert PASSWORD not in log
    assert hashed not in log


async def test_client_certificates_required(sim, tmp_path):
    _fleet, clusters = sim
    f = tls_material(tmp_path)
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {f['server.pem']}\n  key_file: {f['server.key']}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {f['ca.pem']}\n"
    )
    async with Exporter(clusters, "--web.config.file", str(config)) as exp:
        url = f"https://127.0.0.1:{exp.port}"
        with_cert = ssl.create_default_context(cafile=f["ca.pem"])
        with_cert.load_cert_chain(f["client.pem"], f["client.key"])
        await wait_ready(url, with_cert)
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/probe?cluster=beta", ssl=with_cert) as r:
                assert r.status == 200
            without = ssl.create_default_context(cafile=f["ca.pem"])
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url + "/probe?cluster=beta", ssl=without) as r:
                    await r.read()


async def test_broken_web_config_refuses_to_start(sim, tmp_path):
    _fleet, clusters = sim
    config = tmp_path / "web.yml"
    config.write_text("basic_auth_users:\n  admin: not-a-bcrypt-hash\nbogus_key: 1\n")
    async with Exporter(clusters, "--web.config.file", str(config)) as exp:
        assert await asyncio.wait_for(exp.proc.wait(), 30) == 2
    assert "web.yml" in exp.log.read_text()


async def test_sigterm_finishes_in_flight_probes(sim, tmp_path):
    fleet, clusters = sim
    fleet.set_latency("gamma", 1.5)
    async with Exporter(clusters, "--shutdown-timeout", "10") as exp:
        url = f"http://127.0.0.1:{exp.port}"
        await wait_ready(url)
        async with aiohttp.ClientSession() as s:
            in_flight = asyncio.create_task(_probe(s, url, "gamma"))
            await wait_for(lambda: fleet.requests("gamma") > 0, timeout=10)
            exp.proc.send_signal(signal.SIGTERM)
            # The listener closes at once: a new connection is refused.
            await wait_for(lambda: _refused(exp.port), timeout=5)
            status, text = await in_flight
            assert status == 200
            assert value(samples(text), "probe_success") == 1
        assert await asyncio.wait_for(exp.proc.wait(), 15) == 0


async def _probe(session, url, cluster):
    async with session.get(f"{url}/probe?cluster={cluster}") as r:
        return r.status, await r.text()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


async def test_sighup_reloads_the_clusters_directory(sim, tmp_path):
    _fleet, clusters = sim
    async with Exporter(clusters) as exp:
        url = f"http://127.0.0.1:{exp.port}"
        await wait_ready(url)
        (clusters / "alpha.yaml").rename(clusters / "alpha-renamed.yaml")
        (clusters / "fleet.yaml").write_text("defaults: {cache_ttl: 5s}\n")
        exp.proc.send_signal(signal.SIGHUP)

        async def reloaded():
            async with aiohttp.ClientSession() as s, s.get(url + "/targets") as r:
                body = await r.text()
            return '"alpha-renamed"' in body and '"alpha"' not in body

        await wait_for(reloaded, timeout=15, interval=0.1)
        # A broken fleet.yaml on SIGHUP keeps the running configuration.
        (clusters / "fleet.yaml").write_text("defaults: {nonsense: 1}\n")
        exp.proc.send_signal(signal.SIGHUP)

        async def failed_reload():
            async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
                return "fleet_exporter_config_last_reload_successful 0.0" in await r.text()

        await wait_for(failed_reload, timeout=15, interval=0.1)
        async with aiohttp.ClientSession() as s:
            status, text = await _probe(s, url, "alpha-renamed")
        assert status == 200
        assert value(samples(text), "probe_success") == 1
    assert "defaults.nonsense: unknown key" in exp.log.read_text()


PLUGIN_TELLS = """
import os, sys
# A failing plugin that prints everything it was given: env values bare and as NAME=value,
# and its arguments.
sys.stderr.write(os.environ["API_SECRET"] + " " + os.environ["PLUGIN_CONFIG"] + "\\n")
sys.stderr.write("API_SECRET=" + os.environ["API_SECRET"] + "\\n")
sys.stderr.write("args: " + " ".join(sys.argv[1:]) + "\\n")
sys.exit(1)
"""


async def test_exec_plugin_env_args_and_stderr_never_come_out(sim, tmp_path):
    """A canary in an exec plugin's ``env:`` (named like a secret and not), in its args, all
    printed to stderr: none may appear in the log, the debug probe, /api/clusters or the
    cluster page, which all show the plugin's error."""
    _fleet, clusters = sim
    canaries = ["env-canary-5c1e0b9a", "plain-env-canary-a8d2", "arg-canary-73f0d1"]
    script = tmp_path / "tells.py"
    script.write_text(PLUGIN_TELLS)
    kc = clusters / "alpha.yaml"
    config = yaml.safe_load(kc.read_text())
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script), "--cluster=alpha", f"--client-secret={canaries[2]}"],
            "env": [
                {"name": "API_SECRET", "value": canaries[0]},
                {"name": "PLUGIN_CONFIG", "value": canaries[1]},
            ],
            "interactiveMode": "Never",
        }
    }
    kc.write_text(yaml.safe_dump(config))
    async with Exporter(clusters) as exp:
        url = f"http://127.0.0.1:{exp.port}"
        await wait_ready(url)
        outputs = {}
        async with aiohttp.ClientSession() as s:
            for path in (
                "/probe?cluster=alpha&debug=true",
                "/probe?cluster=alpha",
                "/api/clusters",
                "/api/clusters/alpha",
                "/clusters/alpha",
                "/",
                "/metrics",
            ):
                async with s.get(url + path) as r:
                    outputs[path] = await r.text()
    outputs["log"] = exp.log.read_text()
    # The plugin's error reached every place that shows it...
    for where in ("/probe?cluster=alpha&debug=true", "/api/clusters", "/clusters/alpha", "log"):
        assert "exited with status 1" in outputs[where], where
        shown = "API_SECRET=<redacted>"
        assert (html.escape(shown) if where.startswith("/clusters") else shown) in outputs[where]
    assert "--cluster=alpha" in outputs["/api/clusters/alpha"]  # ordinary args stay readable
    # ...and no canary anywhere.
    for where, text in outputs.items():
        for canary in canaries:
            assert canary not in text, f"{canary} in {where}"
