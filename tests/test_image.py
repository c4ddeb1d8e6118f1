"""The container image: the repository's Dockerfile, built and run (`make image-test`).

No container registry is reachable here, so the Dockerfile's base (build argument
PYTHON_IMAGE, python:3.11-slim-bookworm by default) is a local stand-in made from Debian
packages by scripts/local-base-image.sh (debootstrap; cached per machine). buildah builds
the Dockerfile unchanged on it. podman runs the image as uid 65532 with a read-only root
filesystem, no capabilities and the clusters directory mounted read-only, as the
Deployment does, against the simulated fleet on the host's loopback.

Needs root, buildah, podman, runc and debootstrap: `make image-test` installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from .prometheus_harness import DEPLOY, REPO, free_port, http, poll, stop_process

pytestmark = pytest.mark.image

# Per run, so that two runs on one machine never remove each other's image.
IMAGE = f"localhost/fleet-exporter:image-test-{os.getpid()}"
UID = 65532
# This VM grants no CAP_SYS_RESOURCE, so the runtime cannot raise rlimits to podman's
# defaults; crun also refuses its hybrid cgroups, runc does not.
RUN = ["podman", "--runtime", "runc", "run", "--ulimit", "nofile=4096", "--ulimit", "nproc=4096"]


def simulator_command(kubeconfig_dir: Path) -> list[str]:
    """How the simulated fleet is started (a directory of the repository: run from its
    root). It writes one kubeconfig per cluster into `kubeconfig_dir`, then prints
    `READY <port>`."""
    return [
        sys.executable,
        "-m",
        "simulator",
        "--kubeconfig-dir",
        str(kubeconfig_dir),
        "--clusters",
        "3",
    ]


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (debootstrap, buildah, podman)", pytrace=False)
    for tool in ("debootstrap", "buildah", "podman", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run `make image-test`, which installs it")
    base = ok(run(str(REPO / "scripts" / "local-base-image.sh"), timeout=900)).strip()
    build(REPO, IMAGE, f"--build-arg=PYTHON_IMAGE={base}")
    yield IMAGE
    run("podman", "rmi", "--force", IMAGE)


def build(context: Path, tag: str, *options: str) -> None:
    ok(
        run(
            "buildah",
            "bud",
            # No OCI runtime for RUN steps (crun refuses this VM's hybrid cgroups).
            "--isolation=chroot",
            "--network=host",
            # pip in the build reaches PyPI through this machine's TLS trust store.
            "--volume=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
            *options,
            f"--tag={tag}",
            str(context),
            timeout=900,
        )
    )


def in_image(image: str, *command: str) -> str:
    """Run `command` in the image (as its user, without network) and return its stdout."""
    return ok(run(*RUN, "--rm", "--network=none", "--entrypoint", command[0], image, *command[1:]))


def test_image_runs_as_65532_with_the_deployments_command(image) -> None:
    (config,) = json.loads(ok(run("podman", "image", "inspect", image)))
    assert config["Config"]["User"] == f"{UID}:{UID}"
    assert config["Config"]["Entrypoint"] == ["fleet-exporter"]
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert config["Config"]["Cmd"] == container["args"]
    assert in_image(image, "id", "-u").strip() == str(UID)
    assert in_image(image, "fleet-exporter", "--version").startswith("fleet-exporter ")


def test_image_holds_nothing_only_development_needs(image) -> None:
    script = (
        "import importlib.metadata as m, importlib.util as u, json, os\n"
        "print(json.dumps([\n"
        "  [d.metadata['Name'].lower() for d in m.distributions()],\n"
        "  [n for n in ('fleet_exporter.simulator', 'fleet_exporter.bench', 'simulator',"
        " 'bench', 'tests') if u.find_spec(n)],\n"
        "  [p for p in ('/src', '/wheels', '/tests', '/bench') if os.path.exists(p)],\n"
        "]))\n"
    )
    installed, modules, paths = json.loads(in_image(image, "python", "-c", script))
    assert "fleet-exporter" in installed
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    test_only = {
        re.split(r"[<>=!~\[ ;]", spec)[0].lower()
        for spec in pyproject["project"]["optional-dependencies"]["test"]
    }
    assert set(installed) & test_only == set()
    assert modules == [], "the simulator, the benchmark or the tests are in the image"
    assert paths == [], "the build stage's sources or wheels are in the image"


@pytest.fixture
def simulated_fleet(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    clusters = tmp_path / "clusters"
    sim = subprocess.Popen(
        simulator_command(clusters),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        line = sim.stdout.readline() if sim.stdout else ""
        assert line.startswith("READY "), f"simulator: {line!r}"
        names = sorted(p.stem for p in clusters.glob("*.yaml") if p.name != "fleet.yaml")
        # Readable by the exporter only, as the Deployment's fsGroup and 0440 make them.
        for path in [clusters, *clusters.iterdir()]:
            os.chown(path, UID, UID)
        yield clusters, names
    finally:
        stop_process(sim)


@contextmanager
def serving(image: str, clusters: Path) -> Iterator[str]:
    """Run `image` as the Deployment runs it: non-root, read-only root filesystem with a
    small /tmp, no capabilities, no privilege escalation, the clusters directory
    read-only. Yields the exporter's URL once /healthz answers; stops the container."""
    port = free_port()
    container = ok(
        run(
            *RUN,
            "--detach",
            f"--name=fleet-exporter-image-test-{os.getpid()}-{port}",
            "--network=host",  # the simulator listens on the host's loopback
            f"--user={UID}:{UID}",
            "--read-only",
            "--tmpfs=/tmp:size=16m",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            f"--volume={clusters}:/etc/fleet-exporter/clusters:ro",
            image,
            # The image's command, on a free loopback port instead of every address's 9265.
            *("serve", "--clusters", "/etc/fleet-exporter/clusters"),
            *("--listen", f"127.0.0.1:{port}"),
        )
    ).strip()

    def alive(what: str) -> None:
        state = run("podman", "inspect", "--format={{.State.Running}}", container).stdout
        if state.strip() != "true":
            raise RuntimeError(f"the container stopped while waiting for {what}")

    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: http(f"{url}/healthz", timeout=1)[0] == 200, 30, "/healthz", 0.1, alive)
        yield url
    except BaseException:
        print(run("podman", "logs", container).stderr[-4000:])
        raise
    finally:
        run("podman", "stop", "--time=10", container, timeout=60)
        run("podman", "rm", "--force", container)


def probe(url: str, cluster: str) -> str:
    status, body = http(f"{url}/probe?cluster={cluster}&debug=true", timeout=60)
    text = body.decode()
    assert status == 200, text
    assert f'probe_success{{cluster="{cluster}"}} 1' in text, text[:3000]
    return text


def test_image_serves_health_and_a_real_probe(image, simulated_fleet) -> None:
    clusters, names = simulated_fleet
    assert names
    with serving(image, clusters) as url:
        poll(lambda: http(f"{url}/-/ready", timeout=1)[0] == 200, 30, "/-/ready")
        status, body = http(f"{url}/targets")
        assert status == 200
        assert sorted(t for group in json.loads(body) for t in group["targets"]) == names
        text = probe(url, names[0])
        assert re.search(rf'longhorn_volume_robustness\{{cluster="{names[0]}",', text)
        status, body = http(f"{url}/metrics")
        assert status == 200 and b"fleet_exporter_cluster_configured" in body


# A stand-in for kubelogin, gke-gcloud-auth-plugin, aws...: caches under $HOME as they do,
# then prints the ExecCredential with the token the kubeconfig hands it.
FAKE_PLUGIN = """#!/bin/sh
set -e
mkdir -p "$HOME/.kube/cache"
echo cached > "$HOME/.kube/cache/token"
printf '{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
  "status": {"token": "%s"}}' "$FAKE_TOKEN"
"""


def test_a_derived_image_adds_an_exec_plugin(image, simulated_fleet, tmp_path) -> None:
    """deploy/README.md's derived image, built on this image with stand-in plugins: a
    cluster whose kubeconfig gets its token from `kubelogin` is probed successfully."""
    readme = (DEPLOY / "README.md").read_text()
    (dockerfile,) = re.findall(r"```dockerfile\n(.*?)```", readme, re.S)
    (copy,) = [ln.split()[1:] for ln in dockerfile.splitlines() if ln.startswith("COPY ")]
    *plugins, destination = copy
    assert "kubelogin" in plugins and destination == "/usr/local/bin/"
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    for plugin in plugins:
        (context / plugin).write_text(FAKE_PLUGIN)
        (context / plugin).chmod(0o755)
    derived = f"{IMAGE}-plugins"
    build(context, derived, f"--build-arg=FLEET_EXPORTER_IMAGE={image}")
    try:
        clusters, _ = simulated_fleet
        path, config = next(
            (p, c)
            for p in sorted(clusters.glob("*.yaml"))
            if "token" in (c := yaml.safe_load(p.read_text())).get("users", [{}])[0].get("user", {})
        )
        user = config["users"][0]["user"]
        user["exec"] = {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "kubelogin",
            "args": ["get-token"],
            "env": [{"name": "FAKE_TOKEN", "value": user.pop("token")}],
            "interactiveMode": "Never",
        }
        path.write_text(yaml.safe_dump(config))
        with serving(derived, clusters) as url:
            probe(url, path.stem)
    finally:
        run("podman", "rmi", "--force", derived)
