"""The fleet-exporter command (probe, check) and the demo, run as real processes."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fleet_exporter.cli import parse_listen
from fleet_exporter.config import load_fleet
from simulator.demo import write_demo_settings

from .conftest import samples, small_fleet_specs, started_env, value

CLI = [sys.executable, "-m", "fleet_exporter"]
REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


async def test_probe_and_check(tmp_path):
    async with started_env(tmp_path, small_fleet_specs()) as env:
        # The simulator runs in this process's event loop, so run the CLI off-loop.
        import asyncio

        ok = await asyncio.to_thread(run, "probe", "alpha", "--clusters", str(env.clusters))
        assert ok.returncode == 0, ok.stderr
        smp = samples(ok.stdout)
        assert value(smp, "probe_success") == 1
        assert value(smp, "longhorn_up") == 1

        (env.clusters / "delta.yaml").write_text("not: [a kubeconfig")
        bad = await asyncio.to_thread(run, "probe", "delta", "--clusters", str(env.clusters))
        assert bad.returncode == 1
        assert value(samples(bad.stdout), "probe_success") == 0
        assert "delta.yaml" in bad.stderr

        unknown = await asyncio.to_thread(run, "probe", "zeta", "--clusters", str(env.clusters))
        assert unknown.returncode == 2
        assert "unknown cluster 'zeta'" in unknown.stderr

        (env.clusters / "bad name.yaml").write_text("x")
        check = await asyncio.to_thread(run, "check", "--clusters", str(env.clusters))
        assert check.returncode == 1
        lines = check.stdout.splitlines()
        assert any(line.startswith("ok    alpha") and "6 volumes" in line for line in lines)
        assert any(line.startswith("ok    gamma") and "403" in line for line in lines)
        assert any(line.startswith("FAIL  delta") and "delta.yaml" in line for line in lines)
        assert any(line.startswith("FAIL  bad name.yaml") for line in lines)
        assert lines[-1] == "3/5 clusters ok"
        for name in ("alpha", "beta", "gamma"):
            assert env.sim.token_for(name) not in check.stdout + check.stderr


def test_check_of_a_missing_directory_says_so(tmp_path):
    r = run("check", "--clusters", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "clusters directory does not exist" in r.stderr


def test_check_of_an_empty_directory_fails_and_says_why(tmp_path):
    (tmp_path / "fleet.yaml").write_text("defaults: {cache_ttl: 30s}\n")
    r = run("check", "--clusters", str(tmp_path))
    assert r.returncode == 1
    assert r.stdout.strip().splitlines()[-1].startswith(f"no clusters in {tmp_path}")


def test_listen_addresses():
    assert parse_listen(":9265") == (None, 9265)
    assert parse_listen("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_listen("[::1]:9265") == ("::1", 9265)


def test_demo_labels(tmp_path):
    names = ["eu-west-prod-01", "ap-northeast-dev-02", "solo"]
    for n in names:
        (tmp_path / f"{n}.yaml").write_text("x")
    write_demo_settings(tmp_path, names)
    fleet = load_fleet(tmp_path)
    assert dict(fleet.clusters["eu-west-prod-01"].labels) == {"region": "eu-west", "env": "prod"}
    assert dict(fleet.clusters["ap-northeast-dev-02"].labels)["region"] == "ap-northeast"
    assert dict(fleet.clusters["solo"].labels) == {}


def test_demo_serves_the_simulated_fleet(tmp_path):
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.demo", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("Simulated fleet of 51 Longhorn clusters"), first
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "demo never became ready"
            time.sleep(0.1)
        with urllib.request.urlopen(url + "/targets", timeout=5) as r:
            body = r.read().decode()
        assert body.count('"targets"') == 51
        assert '"region"' in body
        name = body.split('"targets": ["', 1)[1].split('"', 1)[0]
        with urllib.request.urlopen(f"{url}/probe?cluster={name}", timeout=30) as r:
            assert value(samples(r.read().decode()), "probe_success") == 1
        # The demo's built-in scraper probes every cluster, so the pages fill in by themselves.
        while True:
            with urllib.request.urlopen(url + "/api/clusters", timeout=10) as r:
                by_status = json.loads(r.read())["by_status"]
            if not by_status.get("unprobed") and by_status.get("up", 0) >= 45:
                break
            assert time.monotonic() < deadline + 30, f"clusters never probed: {by_status}"
            time.sleep(0.2)
        assert by_status.get("down") == 1  # the unreachable one
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert not list(Path(tmp_path).glob("fleet-exporter-demo-*")), "demo kubeconfigs left behind"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subparsers(parser):
    import argparse

    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_flag_has_help_with_its_default_in_plain_words():
    from fleet_exporter.cli import HelpFormatter, build_parser

    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"serve", "probe", "check", "triage"}
    for name, sub in [("", parser), *commands.items()]:
        text = sub.format_help()
        assert "`" not in text and ":func:" not in text and "::" not in text, name
        for action in sub._actions:
            if action.dest in ("help", "version", "command"):
                continue
            assert action.help, (name, action.option_strings or action.dest)
            shown = HelpFormatter("x")._get_help_string(action)
            if action.option_strings or action.nargs == "?":
                assert "(default" in shown, (name, action.option_strings, shown)
            for flag in action.option_strings:
                assert flag in text, (name, flag)
    assert "(default: :9265)" in " ".join(commands["serve"].format_help().split())
    assert "(default: clusters)" in " ".join(commands["check"].format_help().split())


def test_global_options_are_accepted_after_the_subcommand():
    from fleet_exporter.cli import build_parser

    parser = build_parser()
    for command in (["serve"], ["probe", "x"], ["check"], ["triage"]):
        args = parser.parse_args([*command, "--log.level", "debug", "--log.format", "json"])
        assert (args.log_level, args.log_format) == ("debug", "json"), command
        args = parser.parse_args(["--log.level", "error", *command])
        assert (args.log_level, args.log_format) == ("error", "logfmt"), command
        args = parser.parse_args(["--log.level", "error", *command, "--log.level", "warning"])
        assert args.log_level == "warning", command
    r = run("check", "--clusters", "/nonexistent", "--log.format", "json")
    assert r.returncode == 2
    assert json.loads(r.stderr.splitlines()[-1])["level"] == "error"
