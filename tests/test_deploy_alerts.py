"""deploy/alerts: the rules pass promtool's checks and unit tests, the generated files are
what the template and deploy/monitoring-config.yml give (and follow another config), every
alert follows the conventions and is tested both ways, the runbook justifies each one, and
the example Alertmanager config routes by namespace and really mutes a cluster's alerts
(real Alertmanager)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from .prometheus_harness import DEPLOY, REPO, free_port, http, poll, require_binary, stop_process

ALERTS = DEPLOY / "alerts"
RULES = ALERTS / "longhorn-fleet.rules.yml"
TEMPLATE = ALERTS / "longhorn-fleet.rules.tmpl.yml"
GENERATOR = ALERTS / "make-prometheusrule.py"
RUNBOOK = ALERTS / "RUNBOOK.md"
CONFIG = yaml.safe_load((DEPLOY / "monitoring-config.yml").read_text())
RUNBOOK_BASE = CONFIG["runbook_base_url"] + "#"
# What a volume alert does to route to the PVC's team.
NAMESPACE_FROM_PVC = '"namespace", "$1", "pvc_namespace", "(.+)"'
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
# Alerts about the exporter or the whole fleet rather than one cluster.
FLEET_LEVEL = {
    "LonghornFleetExporterDown",
    "LonghornFleetExporterReplicaDown",
    "LonghornFleetExporterConfigNotWatched",
    "LonghornFleetExporterConfigReloadFailed",
    "LonghornFleetExporterConfigMismatch",
    "LonghornFleetManyProbesFailing",
}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# -- promtool ------------------------------------------------------------------------------
def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool")
    result = run(promtool, "check", "rules", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    promtool = require_binary("promtool")
    assert TEST_FILES
    result = run(promtool, "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    labels_seen: dict[str, list[dict]] = {}
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../longhorn-fleet.rules.yml"], path.name
        for group in doc["tests"]:
            # Prometheus 2.42 has no default for a test group's interval.
            assert "interval" in group, f"{path.name}: {group.get('name')}"
            for case in group.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else quiet).add(case["alertname"])
                for exp in case["exp_alerts"]:
                    labels_seen.setdefault(case["alertname"], []).append(exp["exp_labels"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    # Per-cluster alerts really carry the cluster label (Alertmanager groups and inhibits
    # on it), and it is the only identity label besides the object's own.
    for name, seen in labels_seen.items():
        if name not in FLEET_LEVEL:
            assert all("cluster" in labels for labels in seen), name
    # Alerts about a volume carry `namespace` = the PVC's namespace when it has one, and
    # their expression makes it so; the tests show both kinds (with and without a PVC).
    rules = {r["alert"]: r for r in alert_rules()}
    for name, seen in labels_seen.items():
        if any("volume" in labels for labels in seen):
            expr = rules[name]["expr"].rstrip()
            assert expr.startswith("label_replace("), name
            assert expr.removesuffix(")").rstrip().endswith(NAMESPACE_FROM_PVC), name
        for labels in seen:
            assert labels.get("namespace") == labels.get("pvc_namespace"), (name, labels)
    with_pvc = [ls for seen in labels_seen.values() for ls in seen if "pvc_namespace" in ls]
    without_pvc = [ls for seen in labels_seen.values() for ls in seen if "volume" in ls]
    assert with_pvc and any("namespace" not in ls for ls in without_pvc)


# -- generated from the template and the one config ----------------------------------------
def test_committed_files_are_what_the_generator_writes() -> None:
    """Rules, PrometheusRule and the runbook's index regenerate to the committed bytes,
    and the PrometheusRule holds the very same groups as the rule file."""
    result = run(sys.executable, str(GENERATOR), "--check")
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load((ALERTS / "prometheusrule.yaml").read_text())
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_check_fails_on_drift(tmp_path: Path) -> None:
    """--check really compares: a copy with one edited rule is reported stale."""
    out = tmp_path / "out"
    assert run(sys.executable, str(GENERATOR), "--out-dir", str(out)).returncode == 0
    assert run(sys.executable, str(GENERATOR), "--out-dir", str(out), "--check").returncode == 0
    rules = out / "longhorn-fleet.rules.yml"
    rules.write_text(rules.read_text().replace("for: 2m", "for: 3m", 1))
    result = run(sys.executable, str(GENERATOR), "--out-dir", str(out), "--check")
    assert result.returncode == 1
    assert "longhorn-fleet.rules.yml" in result.stderr


def test_another_config_changes_every_selector_and_runbook_url(tmp_path: Path) -> None:
    """Job names (e.g. after a kustomize namePrefix) and the runbook's address are set in
    one file; nothing of the defaults is left in rules generated from another one."""
    config = tmp_path / "config.yml"
    config.write_text(
        'probe_selector: job="team-a-longhorn-fleet"\n'
        'exporter_selector: job=~"team-a-fleet-exporter|fleet-exporter-b"\n'
        "runbook_base_url: https://wiki.example.com/storage/longhorn-runbook.md\n"
    )
    out = tmp_path / "out"
    result = run(sys.executable, str(GENERATOR), "--config", str(config), "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    text = (out / "longhorn-fleet.rules.yml").read_text()
    default_jobs = [CONFIG["probe_selector"], CONFIG["exporter_selector"]]
    assert not any(job in text for job in default_jobs)
    assert CONFIG["runbook_base_url"] not in text
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    assert len(rules) == len(alert_rules())
    selectors = set()
    for rule in rules:
        url = "https://wiki.example.com/storage/longhorn-runbook.md#" + rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == url
        selectors |= set(re.findall(r"job=~?\"[^\"]*\"", rule["expr"]))
    assert selectors == {
        'job="team-a-longhorn-fleet"',
        'job=~"team-a-fleet-exporter|fleet-exporter-b"',
    }
    promtool = require_binary("promtool")
    check = run(promtool, "check", "rules", "--lint-fatal", str(out / "longhorn-fleet.rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    "line",
    ['probe_selector: "{job=\\"x\\"}"', "runbook_base_url: https://x/y.md#z", "extra: 1"],
    ids=["braces", "anchor", "unknown-key"],
)
def test_a_bad_config_is_refused(tmp_path: Path, line: str) -> None:
    good = (DEPLOY / "monitoring-config.yml").read_text()
    key = line.split(":")[0]
    kept = [ln for ln in good.splitlines() if not ln.startswith(f"{key}:")]
    config = tmp_path / "config.yml"
    config.write_text("\n".join([*kept, line]) + "\n")
    result = run(
        sys.executable, str(GENERATOR), "--config", str(config), "--out-dir", str(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "longhorn-fleet.rules.yml").exists()


def test_selectors_appear_only_through_the_config() -> None:
    """The template names no job itself: every job matcher is a placeholder."""
    assert not re.search(r"\bjob\s*=", TEMPLATE.read_text())


def test_prometheusrule_spec_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    manifest = yaml.safe_load((ALERTS / "prometheusrule.yaml").read_text())
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump(manifest["spec"]))
    result = run(promtool, "check", "rules", "--lint-fatal", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


# -- conventions -------------------------------------------------------------------------------
def runbook_anchors() -> dict[str, str]:
    """GitHub's anchor for each `## Heading` of the runbook -> heading."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-"): h for h in headings}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Longhorn[A-Z][A-Za-z]+", name)
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert set(rule["labels"]) == {"severity"}, "identity comes from the expression"
    ann = rule["annotations"]
    assert set(ann) == {"summary", "description", "runbook_url"}
    assert ann["summary"][0].isupper() and ann["summary"].endswith(".")
    assert "{{" not in ann["summary"], "summary is static; details go to description"
    if name != "LonghornFleetExporterDown":
        assert "{{ $labels." in ann["description"] or "{{ $value" in ann["description"]
    assert ann["runbook_url"] == RUNBOOK_BASE + name.lower()
    assert name.lower() in runbook_anchors(), f"RUNBOOK.md has no section {name}"
    assert rule.get("for"), "every alert waits before firing"
    expr = rule["expr"]
    if name not in FLEET_LEVEL:
        assert re.search(r"by \(cluster[,)]", expr), "aggregate by (cluster, ...)"
        for join in re.findall(r"\b(?:on|ignoring)\s*\(([^)]*)\)", expr):
            assert "cluster" in join, f"join without cluster: on ({join})"
    # Longhorn >= 1.11 is one-hot: the documented `robustness == 3` never fires.
    assert not re.search(r"robustness[^\n]*==\s*[23]\b", expr)
    if "longhorn_volume_robustness" in expr or "longhorn_volume_state" in expr:
        assert re.search(r'state="[a-z]+"\}\s*\)?\s*==\s*1', expr)


def runbook_sections() -> dict[str, str]:
    """Alert name -> the text of its `## Name` section."""
    text = RUNBOOK.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_runbook_section_belongs_to_an_alert() -> None:
    names = {r["alert"].lower() for r in alert_rules()}
    general = {"how-alerts-reach-people", "alert-index"}
    assert set(runbook_anchors()) - general == names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_runbook_justifies_severity_and_wait(rule: dict[str, Any]) -> None:
    """Each section opens with the alert's severity and waits, then says why; changing
    either in the rules without revisiting the reason fails here."""
    section = runbook_sections()[rule["alert"]].strip()
    head = f"**{rule['labels']['severity']}, for {rule['for']}"
    if "keep_firing_for" in rule:
        head += f", keep firing {rule['keep_firing_for']}"
    assert section.startswith(head + ".**"), section.splitlines()[0]
    reason = section.split("\n\n")[0].removeprefix(head + ".**")
    assert len(reason.split()) >= 12, f"{rule['alert']}: say why"


def test_every_metric_in_the_rules_is_documented() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", (REPO / "docs" / "metrics.md").read_text()))
    for rule in alert_rules():
        for name in re.findall(r"\b((?:longhorn|probe|fleet_exporter)_[a-z0-9_]+)\b", rule["expr"]):
            assert name in documented, f"{rule['alert']}: {name} is not in docs/metrics.md"


# -- Alertmanager ---------------------------------------------------------------------------------
AM_CONFIG = ALERTS / "alertmanager.example.yml"


def test_amtool_check_config() -> None:
    amtool = require_binary("amtool")
    result = run(amtool, "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ("alertname=LonghornBackupFailed namespace=db severity=warning", "team-databases"),
        (
            "alertname=LonghornVolumeFaulted namespace=db-eu severity=critical",
            "team-databases,pager",
        ),
        ("alertname=LonghornVolumeFaulted namespace=web severity=critical", "pager"),
        ("alertname=LonghornNodeNotReady severity=warning", "tickets"),
    ],
)
def test_example_routes_volume_alerts_to_the_pvc_namespace_team(
    labels: str, receivers: str
) -> None:
    amtool = require_binary("amtool")
    result = run(amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels.split())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receivers


def test_inhibit_rules_name_real_alerts() -> None:
    names = {r["alert"] for r in alert_rules()}
    config = yaml.safe_load(AM_CONFIG.read_text())
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"]:
            listed = re.fullmatch(r'alertname=~"(.+)"', matcher).group(1).split("|")
            assert set(listed) <= names, listed


@contextmanager
def running_alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={AM_CONFIG}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        poll(lambda: ready(url), 15, "alertmanager /-/ready", 0.05, alive(proc))
        yield url
    finally:
        stop_process(proc)
        log.close()


def alive(proc: subprocess.Popen[bytes]):
    def check(what: str) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"alertmanager exited with {proc.returncode} ({what})")

    return check


def ready(url: str) -> bool:
    return http(f"{url}/-/ready", timeout=1)[0] == 200


def wait_for_states(url: str, expected: dict[tuple[str, str], str], what: str) -> None:
    last: dict[tuple[str, str], str] = {}

    def settled() -> bool:
        nonlocal last
        last = states(url)
        return last == expected

    try:
        poll(settled, 15, what, 0.05)
    except TimeoutError:
        pytest.fail(f"{what}: expected {expected}, got {last}")


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    body = json.dumps([{"labels": labels} for labels in alerts]).encode()
    req = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def states(url: str) -> dict[tuple[str, str], str]:
    status, body = http(f"{url}/api/v2/alerts", timeout=5)
    assert status == 200
    return {
        (a["labels"]["alertname"], a["labels"].get("cluster", "")): a["status"]["state"]
        for a in json.loads(body)
    }


@pytest.mark.prometheus
def test_an_unreachable_cluster_mutes_only_its_own_alerts(tmp_path: Path) -> None:
    def alert(name: str, cluster: str | None, severity: str = "warning") -> dict[str, str]:
        labels = {"alertname": name, "severity": severity}
        return labels | ({"cluster": cluster} if cluster else {})

    # Volume alerts carry the PVC's namespace (routed to its team): inhibition still
    # goes by cluster alone.
    clusters = [
        alert("LonghornClusterUnreachable", "east-1"),
        alert("LonghornVolumeFaulted", "east-1", "critical") | {"namespace": "db"},
        alert("LonghornDataStale", "east-1"),
        alert("LonghornVolumeFaulted", "west-2", "critical") | {"namespace": "db"},
        alert("LonghornFleetProbeFailing", "north-3"),
        alert("LonghornNodeNotReady", "north-3"),
    ]
    # Rule 1: a cluster that cannot be collected mutes its own other alerts, no one else's.
    expected = {
        ("LonghornClusterUnreachable", "east-1"): "active",
        ("LonghornVolumeFaulted", "east-1"): "suppressed",
        ("LonghornDataStale", "east-1"): "suppressed",
        ("LonghornVolumeFaulted", "west-2"): "active",
        ("LonghornFleetProbeFailing", "north-3"): "active",
        ("LonghornNodeNotReady", "north-3"): "suppressed",
    }
    # Rule 2: with the exporter down, the per-cluster probe alerts are muted as well; the
    # other alerts stay as they were (a muted source still mutes its cluster).
    exporter_down = {
        **expected,
        ("LonghornClusterUnreachable", "east-1"): "suppressed",
        ("LonghornFleetProbeFailing", "north-3"): "suppressed",
        ("LonghornFleetExporterDown", ""): "active",
    }
    with running_alertmanager(tmp_path) as url:
        post_alerts(url, clusters)
        wait_for_states(url, expected, "rule 1")
        post_alerts(url, [*clusters, alert("LonghornFleetExporterDown", None, "critical")])
        wait_for_states(url, exporter_down, "rule 2")
