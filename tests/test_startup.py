"""A start that cannot go on says why in one line: real ``fleet-exporter serve``
processes; the errors that leave nothing to serve end the process with exit code 2 and one
line, with no traceback and nothing before it that claims the server runs."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from .kubelet import REPO

CLI = [sys.executable, "-m", "fleet_exporter"]


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
    ],
)
def test_a_bad_command_line_is_exit_code_2(flag, value, message):
    r = serve(flag, value)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
