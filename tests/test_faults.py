"""The fault matrix: every way a cluster can break, injected into one cluster of a running
fleet. The healthy cluster's answer must not change, the sick one must say precisely what
is wrong, and it must recover on its own when the fault clears. Throughout, no credential
may appear in any response or log line."""

import logging
import re
import stat
import sys
from pathlib import Path

import yaml

from simulator.faults import FaultSettings
from simulator.fleet import ClusterSpec
from simulator.tls import CertificateAuthority

from .conftest import samples, started_env, value

# Fault -> the error classes the victim may report for it (upstream_requests code).
UPSTREAM_FAULTS = {
    "401": {"401"},
    "403": {"403"},
    "404": {"404"},
    "429": {"429"},  # Retry-After: 1, waited for within the deadline
    "throttle": {"429"},  # Retry-After: 3600, past the deadline: fails at once
    "redirect": {"redirect"},  # never followed
    "500": {"500"},
    "503": {"503"},
    "timeout": {"timeout"},
    "slow_drip": {"timeout"},
    "truncated": {"invalid", "reset"},
    "invalid_json": {"invalid"},
    "wrong_content_type": {"invalid"},
    "oversized": {"body_too_large"},
    "gzip_bomb": {"body_too_large"},
    "truncated_gzip": {"invalid"},
    "unknown_encoding": {"invalid"},
    "reset": {"reset"},
    "endless_continue": {"invalid"},
    "expired_continue": {"410"},
}

# Each refresh of both clusters goes upstream (cache_ttl 0, no back-off), so "unchanged"
# means something and each fault's own calls are seen.
FLEET_YAML = """
defaults: {cache_ttl: 0s, max_backoff: 0s}
clusters:
  victim:
    request_timeout: 1s
    connect_timeout: 1s
    refresh_timeout: 4s
    max_page_bytes: 1048576
    max_pages: 20
    page_size: 2
    exec_timeout: 1s
"""
VOLATILE = {
    "probe_duration_seconds",
    "longhorn_exporter_data_age_seconds",
    "longhorn_exporter_list_duration_seconds",
}
HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "6"}


def specs() -> list[ClusterSpec]:
    return [
        ClusterSpec(name="healthy", volumes=5, nodes=3, seed=11),
        ClusterSpec(name="victim", volumes=5, nodes=3, seed=12),
        ClusterSpec(name="certy", volumes=3, nodes=2, seed=13, auth="cert"),
    ]


def stable(smp: dict) -> dict:
    return {k: v for k, v in smp.items() if k[0] not in VOLATILE}


def failing_calls(log: str) -> set[str]:
    """The codes of failed upstream calls in a probe's debug log, plus "invalid" when a
    resource was refused for its page count (that is no single call's fault)."""
    section = log.split("Upstream calls:", 1)[1].split("Resources:", 1)[0]
    codes = {m.group(1) for m in re.finditer(r"^\s+(\S+)\s+\w+\s+page", section, re.M)}
    if "continue never ends" in log:
        codes.add("invalid")
    return codes - {"200"}


class Canary:
    """Collects every response body and log line; at the end no secret may be in them."""

    def __init__(self, sim, caplog):
        self.secrets = [sim.token_for(n) for n in sim.names() if sim.token_for(n)]
        cert = sim.client_cert_for("certy")
        key_lines = [ln for ln in cert.key_pem.splitlines() if ln and "-----" not in ln]
        self.secrets += key_lines
        self.bodies: list[str] = []
        self.caplog = caplog

    def add(self, text: str) -> str:
        self.bodies.append(text)
        return text

    def check(self) -> None:
        everything = "\n".join(self.bodies) + "\n" + self.caplog.text
        assert len(self.bodies) > 20
        for secret in self.secrets:
            assert secret not in everything, "a credential leaked into a response or log"


async def test_upstream_fault_matrix(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    quick = FaultSettings(drip_interval=0.05, oversized_bytes=3 * 1024 * 1024, hang_seconds=30)
    async with started_env(tmp_path, specs(), FLEET_YAML, fault_settings=quick) as env:
        canary = Canary(env.sim, caplog)
        _, baseline, text = await env.probe("healthy")
        canary.add(text)
        assert value(baseline, "probe_success") == 1
        problems = []
        for fault, codes in UPSTREAM_FAULTS.items():
            env.sim.set_fault("victim", fault)
            status, smp, text = await env.probe("victim", headers=HEADERS)
            canary.add(text)
            debug = canary.add(
                (await env.get("/probe?cluster=victim&debug=true", headers=HEADERS))[1]
            )
            seen = failing_calls(env.fleet.clusters["victim"].history.records()[0].log)
            if status != 200 or value(smp, "probe_success") != 0 or not seen & codes:
                problems.append(f"{fault}: status {status}, calls failed with {seen}")
            if "Probe FAILED" not in debug:
                problems.append(f"{fault}: debug output does not say the probe failed")
            _, other, text = await env.probe("healthy")
            canary.add(text)
            if stable(other) != stable(baseline):
                problems.append(f"{fault}: the healthy cluster's answer changed")
            env.sim.clear_faults("victim")
            _, recovered, text = await env.probe("victim", headers=HEADERS)
            canary.add(text)
            if value(recovered, "probe_success") != 1:
                problems.append(f"{fault}: did not recover after the fault cleared")
        for path in ("/metrics", "/targets", "/"):
            canary.add((await env.get(path))[1])
        assert not problems, "\n".join(problems)
        canary.check()
        _, metrics, _ = await env.get("/metrics")
        for code in (
            "401",
            "403",
            "410",
            "timeout",
            "body_too_large",
            "invalid",
            "reset",
            "redirect",
        ):
            assert f'code="{code}"' in metrics, code


def exec_kubeconfig(original: dict, plugin: Path) -> dict:
    config = yaml.safe_load(yaml.safe_dump(original))
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    return config


def write_plugin(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_kubeconfig_fault_matrix(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with started_env(tmp_path, specs(), FLEET_YAML) as env:
        canary = Canary(env.sim, caplog)
        kc = env.clusters / "victim.yaml"
        original = yaml.safe_load(kc.read_text())
        token = env.sim.token_for("victim")
        other_ca = CertificateAuthority("somebody else's CA").cert_pem

        def changed(mutate) -> dict:
            config = yaml.safe_load(yaml.safe_dump(original))
            mutate(config["clusters"][0]["cluster"])
            return config

        import base64

        cases = {
            "wrong CA": (
                changed(
                    lambda c: c.update(
                        {"certificate-authority-data": base64.b64encode(other_ca.encode()).decode()}
                    )
                ),
                "TLS certificate rejected",
            ),
            "wrong server name": (
                changed(lambda c: c.update({"tls-server-name": "not-the-apiserver.example"})),
                "TLS certificate rejected",
            ),
            "DNS failure": (
                changed(
                    lambda c: c.update(
                        {"server": c["server"].replace("127.0.0.1", "no-such-host.invalid")}
                    )
                ),
                "cannot resolve host",
            ),
            "exec plugin hangs": (
                exec_kubeconfig(
                    original, write_plugin(tmp_path / "hang.py", "import time\ntime.sleep(60)\n")
                ),
                "timed out",
            ),
            "exec plugin prints garbage": (
                exec_kubeconfig(
                    original, write_plugin(tmp_path / "junk.py", "print('<<garbage>>')\n")
                ),
                "exec plugin",
            ),
        }
        good_exec = write_plugin(
            tmp_path / "good.py",
            "import json\nprint(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1',"
            f" 'kind': 'ExecCredential', 'status': {{'token': {token!r}}}}}))\n",
        )
        cases["exec plugin works"] = (exec_kubeconfig(original, good_exec), None)

        problems = []
        for case, (config, expected) in cases.items():
            kc.write_text(yaml.safe_dump(config))
            await env.fleet.reload()
            _status, smp, text = await env.probe("victim", headers=HEADERS)
            canary.add(text)
            debug = canary.add(
                (await env.get("/probe?cluster=victim&debug=true", headers=HEADERS))[1]
            )
            if expected is None:
                if value(smp, "probe_success") != 1:
                    problems.append(f"{case}: probe failed: {debug[:500]}")
            elif value(smp, "probe_success") != 0 or expected not in debug:
                problems.append(
                    f"{case}: expected {expected!r} in the debug output:\n{debug[:800]}"
                )
            _, other, text = await env.probe("healthy")
            canary.add(text)
            if value(other, "probe_success") != 1:
                problems.append(f"{case}: the healthy cluster failed")
            kc.write_text(yaml.safe_dump(original))
            await env.fleet.reload()
            _, back, text = await env.probe("victim", headers=HEADERS)
            canary.add(text)
            if value(back, "probe_success") != 1:
                problems.append(f"{case}: did not recover with the original kubeconfig")
        canary.add((await env.get("/metrics"))[1])
        assert not problems, "\n".join(problems)
        canary.check()


async def test_samples_helper_sees_every_series(env):
    # Guard for the matrix above: the comparison is over real, non-empty answers.
    _, smp, _ = await env.probe("alpha")
    assert len(stable(smp)) > 100
    assert samples("") == {}
