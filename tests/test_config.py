"""The clusters directory and fleet.yaml: strict parsing that names the bad key."""

from pathlib import Path

import pytest

from fleet_exporter.config import ConfigError, Settings, load_fleet, parse_duration

KUBECONFIG = "apiVersion: v1\nkind: Config\n"


def make_dir(tmp_path: Path, fleet_yaml: str | None, *files: str) -> Path:
    for name in files:
        (tmp_path / name).write_text(KUBECONFIG)
    if fleet_yaml is not None:
        (tmp_path / "fleet.yaml").write_text(fleet_yaml)
    return tmp_path


def test_every_kubeconfig_file_is_a_cluster(tmp_path):
    d = make_dir(tmp_path, None, "a.yaml", "b.yml", "c.kubeconfig", "notes.txt", ".hidden.yaml")
    fleet = load_fleet(d)
    assert sorted(fleet.clusters) == ["a", "b", "c"]
    assert fleet.clusters["a"].settings == Settings()
    assert fleet.clusters["b"].kubeconfig == tmp_path / "b.yml"


def test_defaults_and_overrides_and_labels(tmp_path):
    d = make_dir(
        tmp_path,
        """
server: {max_concurrent_refreshes: 4}
defaults: {cache_ttl: 20s, max_staleness: 2m, namespace: storage}
clusters:
  b:
    cache_ttl: 1m30s
    concurrency: 3
    labels: {region: eu-west, tier: 1}
""",
        "a.yaml",
        "b.yaml",
    )
    fleet = load_fleet(d)
    assert fleet.server.max_concurrent_refreshes == 4
    a, b = fleet.clusters["a"], fleet.clusters["b"]
    assert (a.settings.cache_ttl, a.settings.max_staleness, a.settings.namespace) == (
        20.0,
        120.0,
        "storage",
    )
    assert (b.settings.cache_ttl, b.settings.concurrency, b.settings.namespace) == (
        90.0,
        3,
        "storage",
    )
    assert dict(b.labels) == {"region": "eu-west", "tier": "1"}
    assert dict(a.labels) == {}


@pytest.mark.parametrize(
    ("fleet_yaml", "message"),
    [
        ("defaults: {cache_tll: 5}", "fleet.yaml: defaults.cache_tll: unknown key"),
        ("defualts: {}", "fleet.yaml: defualts: unknown key"),
        ("server: {max_probes: 3}", "fleet.yaml: server.max_probes: unknown key"),
        ("clusters: {a: {timout: 3}}", "fleet.yaml: clusters.a.timout: unknown key"),
        ("clusters: {zz: {}}", "clusters.zz: no kubeconfig file for this cluster"),
        ("defaults: {cache_ttl: soon}", "defaults.cache_ttl: invalid duration 'soon'"),
        ("defaults: {cache_ttl: -1}", "defaults.cache_ttl: must not be negative"),
        ("defaults: {concurrency: 0}", "defaults.concurrency: expected a positive whole number"),
        ("defaults: {concurrency: true}", "expected a positive whole number"),
        ("defaults: {namespace: ''}", "defaults.namespace: expected a non-empty string"),
        ("defaults: [1, 2]", "fleet.yaml: defaults: expected a mapping"),
        ("clusters: {a: {labels: {cluster: x}}}", "clusters.a.labels.cluster: reserved"),
        ("clusters: {a: {labels: {__x: y}}}", "not a valid Prometheus label name"),
        ("clusters: {a: {labels: {'bad-name': y}}}", "not a valid Prometheus label name"),
        ("clusters: {a: {labels: {env: [1]}}}", "label values must be strings"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("defaults: {cache_ttl: [", "not valid YAML (line"),
    ],
)
def test_bad_fleet_yaml_names_the_problem(tmp_path, fleet_yaml, message):
    d = make_dir(tmp_path, fleet_yaml, "a.yaml")
    with pytest.raises(ConfigError) as e:
        load_fleet(d)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "filename",
    [
        "bad name.yaml",
        "-leading.yaml",
        "trailing-.yaml",
        "semi;colon.yaml",
        "quote'.yaml",
        "<script>.yaml",
        "ünïcode.yaml",
        "x" * 129 + ".yaml",
    ],
)
def test_unsafe_cluster_names_are_rejected_but_do_not_stop_the_others(tmp_path, filename):
    d = make_dir(tmp_path, None, "good.yaml")
    (tmp_path / filename).write_text(KUBECONFIG)
    fleet = load_fleet(d)
    assert list(fleet.clusters) == ["good"]
    assert "not a valid cluster name" in fleet.rejected[filename]


def test_same_name_twice_is_rejected(tmp_path):
    d = make_dir(tmp_path, None, "a.yaml", "a.yml")
    fleet = load_fleet(d)
    assert list(fleet.clusters) == ["a"]
    assert fleet.rejected == {"a.yml": "cluster 'a' is already defined by a.yaml"}


def test_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="clusters directory does not exist"):
        load_fleet(tmp_path / "nope")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0.5, 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1s500ms", 1.5),
        ("", None),
        ("5", None),
        (True, None),
    ],
)
def test_durations(value, seconds):
    if seconds is None:
        with pytest.raises(ConfigError):
            parse_duration(value, "x")
    else:
        assert parse_duration(value, "x") == seconds


def test_shipped_example_parses(tmp_path):
    example = Path(__file__).resolve().parents[1] / "clusters" / "fleet.example.yaml"
    d = make_dir(tmp_path, example.read_text(), "eu-west-prod-01.yaml")
    fleet = load_fleet(d)
    assert fleet.clusters["eu-west-prod-01"].settings.cache_ttl == 55
    assert fleet.defaults.timeout_offset == 0.5
