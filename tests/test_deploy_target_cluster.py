"""deploy/target-cluster/make-kubeconfig.sh, run for real.

The script runs with the real kubectl against an admin kubeconfig for a simulated
cluster (real TLS, bearer-token auth). Only `kubectl get secret` is answered by a wrapper,
because the simulator serves Longhorn's API group, not core Secrets; every other kubectl
call, including the script's final check that the new credentials can list Longhorn
volumes, goes to the real binary. The file it writes is then loaded by the exporter's own
config and credentials code.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fleet_exporter.config import load_fleet
from fleet_exporter.credentials import load_credentials
from simulator.fleet import ClusterSpec
from simulator.server import SimulatedFleet

from .prometheus_harness import DEPLOY, require_binary

SCRIPT = DEPLOY / "target-cluster" / "make-kubeconfig.sh"
ADMIN_TOKEN = "admin-token-that-must-never-be-copied"

# Answers `get secret` (token or ca.crt, base64 as kubectl prints them) and logs every
# argv, so the test can check the token never travels on a command line.
WRAPPER = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_KUBECTL_LOG"
case "$*" in
  *"get secret"*'ca\\.crt'*) printf '%s' "$FAKE_CA_B64"; exit 0 ;;
  *"get secret"*) printf '%s' "$FAKE_TOKEN_B64"; exit 0 ;;
esac
exec "$REAL_KUBECTL" "$@"
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class Setup:
    sim: SimulatedFleet
    tmp: Path
    out: Path
    env: dict[str, str]
    log: Path

    @property
    def token(self) -> str:
        return self.sim.token_for("alpha")

    async def run(self, *args: str) -> tuple[int, str, str]:
        """Run the script without blocking the loop the simulator serves on."""
        proc = await asyncio.create_subprocess_exec(
            str(SCRIPT),
            *args,
            cwd=self.tmp,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0, out.decode(), err.decode()


def admin_kubeconfig(sim: SimulatedFleet, *, with_ca: bool = True) -> dict:
    """What an operator's kubeconfig looks like: the simulated cluster as current context,
    an admin user, and another cluster the script must not copy."""
    cluster = {"server": sim.url_for("alpha")}
    if with_ca:
        cluster["certificate-authority-data"] = b64(sim.ca_pem)
    else:
        cluster["insecure-skip-tls-verify"] = True
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "alpha-admin", "cluster": cluster},
            {"name": "elsewhere", "cluster": {"server": "https://192.0.2.1:6443"}},
        ],
        "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
        "contexts": [
            {"name": "alpha-admin", "context": {"cluster": "alpha-admin", "user": "admin"}},
            {"name": "elsewhere", "context": {"cluster": "elsewhere", "user": "admin"}},
        ],
        "current-context": "alpha-admin",
    }


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    kubectl = require_binary("kubectl")
    sim = SimulatedFleet([ClusterSpec(name="alpha", volumes=2, nodes=1, seed=7)])
    await sim.start()
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "kubectl"
        wrapper.write_text(WRAPPER)
        wrapper.chmod(0o755)
        admin = tmp_path / "admin.kubeconfig"
        admin.write_text(yaml.safe_dump(admin_kubeconfig(sim)))
        out = tmp_path / "clusters"
        out.mkdir()
        log = tmp_path / "kubectl.log"
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "KUBECONFIG": str(admin),
            "REAL_KUBECTL": kubectl,
            "FAKE_KUBECTL_LOG": str(log),
            "FAKE_TOKEN_B64": b64(sim.token_for("alpha")),
            "FAKE_CA_B64": b64(sim.ca_pem),
        }
        yield Setup(sim, tmp_path, out, env, log)
    finally:
        await sim.stop()


async def test_writes_a_minimal_private_kubeconfig_the_exporter_loads(setup: Setup) -> None:
    rc, stdout, stderr = await setup.run("alpha", "clusters")
    assert rc == 0, stderr
    # The script's own check listed volumes with the new file, through the real kubectl.
    assert "can list Longhorn volumes" in stdout
    path = setup.out / "alpha.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    doc = yaml.safe_load(text)
    assert [c["name"] for c in doc["clusters"]] == ["alpha"]
    assert doc["clusters"][0]["cluster"] == {
        "server": setup.sim.url_for("alpha"),
        "certificate-authority-data": b64(setup.sim.ca_pem),
    }
    assert doc["users"] == [{"name": "fleet-exporter-reader", "user": {"token": setup.token}}]
    assert doc["contexts"] == [
        {
            "name": "alpha",
            "context": {
                "cluster": "alpha",
                "user": "fleet-exporter-reader",
                "namespace": "longhorn-system",
            },
        }
    ]
    assert doc["current-context"] == "alpha"
    assert ADMIN_TOKEN not in text and "192.0.2.1" not in text
    # The token never appears in the script's output or on any kubectl command line.
    assert setup.token not in stdout + stderr
    assert setup.token not in setup.log.read_text()

    # The exporter's loader takes the file as cluster "alpha", with the shipped fleet.yaml.
    (setup.out / "fleet.yaml").write_text((DEPLOY / "kubernetes" / "fleet.yaml").read_text())
    fleet = load_fleet(setup.out)
    assert list(fleet.clusters) == ["alpha"]
    creds = await load_credentials(path)
    assert creds.endpoint.server.rstrip("/") == setup.sim.url_for("alpha")
    assert await creds.authorization() == f"Bearer {setup.token}"


async def test_refuses_to_overwrite(setup: Setup) -> None:
    target = setup.out / "alpha.yaml"
    target.write_text("keep me\n")
    rc, _stdout, stderr = await setup.run("alpha", "clusters")
    assert rc == 1
    assert "already exists" in stderr
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bad name", "clusters"), "invalid cluster name"),
        (("-leading-dash", "clusters"), "invalid cluster name"),
        (("alpha", "missing-dir"), "does not exist"),
    ],
)
async def test_rejects_bad_arguments(setup: Setup, args: tuple[str, str], message: str) -> None:
    rc, _stdout, stderr = await setup.run(*args)
    assert rc == 1
    assert message in stderr
    assert list(setup.out.iterdir()) == []


async def test_warns_when_the_token_does_not_work(setup: Setup) -> None:
    setup.env["FAKE_TOKEN_B64"] = b64("not-the-right-token")
    rc, stdout, stderr = await setup.run("alpha", "clusters")
    assert rc == 0  # the file is written; the operator is told
    assert "WARNING" in stderr and "can list" not in stdout
    assert (setup.out / "alpha.yaml").exists()


async def test_without_a_ca_in_the_context_it_uses_the_secrets_ca(setup: Setup) -> None:
    Path(setup.env["KUBECONFIG"]).write_text(
        yaml.safe_dump(admin_kubeconfig(setup.sim, with_ca=False))
    )
    rc, stdout, stderr = await setup.run("alpha", "clusters")
    assert rc == 0, stderr
    doc = yaml.safe_load((setup.out / "alpha.yaml").read_text())
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["certificate-authority-data"] == b64(setup.sim.ca_pem)
    assert "insecure-skip-tls-verify" not in cluster
    assert "can list Longhorn volumes" in stdout


def test_script_is_shellcheck_clean() -> None:
    shellcheck = require_binary("shellcheck")
    result = subprocess.run(
        [shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout
