"""The clusters directory and fleet.yaml: strict parsing that names the bad key, and a
bad key that costs only what it concerns."""

from pathlib import Path

import pytest

from fleet_exporter.config import ConfigError, NotServed, Settings, load_fleet, parse_duration

from .kubelet import kubelet_volume

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
    assert fleet.rejected == {}
    assert list(fleet.ignored) == [".hidden.yaml"]  # notes.txt is not named like a config


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("fleet.yml", "reserved"),
        ("fleet.example.yaml", "reserved"),
        ("fleet.old.yml", "reserved"),
        ("fleet.kubeconfig", "reserved"),
        ("example.yaml", "reserved"),
        ("prod.sample.yaml", "reserved"),
        ("x.yaml.bak", "backup"),
        ("y.yaml~", "backup"),
        ("z.yaml.orig", "backup"),
        ("w.yml.swp", "backup"),
        ("v.kubeconfig.dpkg-old", "backup"),
        (".hidden.yaml", "hidden"),
        (".x.yaml.swp", "hidden"),
        ("u.yaml.disabled", "suffix"),
        ("t.yaml.txt", "suffix"),
    ],
)
def test_files_that_are_never_clusters(tmp_path, filename, reason):
    d = make_dir(tmp_path, None, "good.yaml", filename)
    fleet = load_fleet(d)
    assert list(fleet.clusters) == ["good"]
    assert fleet.ignored[filename].reason == reason
    assert fleet.rejected == {}


def test_names_that_only_look_reserved_are_clusters(tmp_path):
    d = make_dir(tmp_path, None, "fleetwood.yaml", "prod.example.com.yaml", "my-fleet.yml")
    assert sorted(load_fleet(d).clusters) == ["fleetwood", "my-fleet", "prod.example.com"]


def test_a_kubernetes_volume_layout(tmp_path):
    d = tmp_path / "clusters"
    kubelet_volume(
        d,
        "..2026_12_02_10_00_00.123",
        {"a.yaml": KUBECONFIG, "b.yaml": KUBECONFIG, "fleet.yaml": "defaults: {cache_ttl: 5s}"},
    )
    fleet = load_fleet(d)
    assert sorted(fleet.clusters) == ["a", "b"]
    assert fleet.defaults.cache_ttl == 5
    assert (fleet.rejected, fleet.ignored) == ({}, {})  # ..data and ..<timestamp> pass in silence


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


def test_probe_limit_grows_with_the_fleet_unless_set(tmp_path):
    """max_concurrent_probes: auto (the default) is 4 per configured cluster + 100, so an
    HA pair probing every cluster at once is always admitted; a number is the limit."""
    assert load_fleet(make_dir(tmp_path, None, "a.yaml")).server.probe_limit(500) == 2100
    auto = make_dir(tmp_path, "server: {max_concurrent_probes: auto}")
    assert load_fleet(auto).server.probe_limit(3) == 112
    fixed = make_dir(tmp_path, "server: {max_concurrent_probes: 7}")
    assert load_fleet(fixed).server.probe_limit(500) == 7


@pytest.mark.parametrize(
    ("fleet_yaml", "message"),
    [
        ("defaults: {cache_tll: 5}", "fleet.yaml: defaults.cache_tll: unknown key"),
        ("defualts: {}", "fleet.yaml: defualts: unknown key"),
        ("server: {max_probes: 3}", "fleet.yaml: server.max_probes: unknown key"),
        *(
            (
                f"server: {{max_concurrent_probes: {v}}}",
                "server.max_concurrent_probes: expected auto",
            )
            for v in ("many", "0", "-1", "true", "Auto", "2.5")
        ),
        ("defaults: {cache_ttl: soon}", "defaults.cache_ttl: invalid duration 'soon'"),
        ("defaults: {cache_ttl: -1}", "defaults.cache_ttl: must not be negative"),
        ("defaults: {concurrency: 0}", "defaults.concurrency: expected a positive whole number"),
        ("defaults: {concurrency: true}", "expected a positive whole number"),
        ("defaults: {namespace: ''}", "defaults.namespace: expected a non-empty string"),
        ("defaults: [1, 2]", "fleet.yaml: defaults: expected a mapping"),
        ("clusters: [a, b]", "fleet.yaml: clusters: expected a mapping of cluster names"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("defaults: {cache_ttl: [", "not valid YAML (line"),
    ],
)
def test_bad_fleet_yaml_names_the_problem(tmp_path, fleet_yaml, message):
    """What concerns the whole fleet (the file, server:, defaults:) is a ConfigError."""
    d = make_dir(tmp_path, fleet_yaml, "a.yaml")
    with pytest.raises(ConfigError) as e:
        load_fleet(d)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{timout: 3}", "fleet.yaml: clusters.a.timout: unknown key (known keys: cache_ttl,"),
        ("{cache_ttl: soon}", "fleet.yaml: clusters.a.cache_ttl: invalid duration 'soon'"),
        ("{concurrency: 0}", "fleet.yaml: clusters.a.concurrency: expected a positive whole"),
        ("5", "fleet.yaml: clusters.a: expected a mapping"),
        ("{labels: {cluster: x}}", "fleet.yaml: clusters.a.labels.cluster: reserved"),
        ("{labels: {__x: y}}", "clusters.a.labels.__x: not a valid Prometheus label name"),
        ("{labels: {'bad-name': y}}", "not a valid Prometheus label name"),
        ("{labels: {env: [1]}}", "clusters.a.labels.env: label values must be strings"),
        ("{labels: [x]}", "clusters.a.labels: expected a mapping of label names"),
    ],
)
def test_a_bad_cluster_entry_breaks_that_cluster_only(tmp_path, entry, message):
    """Strict per cluster too: the cluster is configured but broken, with the key named;
    it does not run with defaults instead. The other clusters are not touched."""
    d = make_dir(tmp_path, f"clusters: {{a: {entry}, b: {{cache_ttl: 1m}}}}", "a.yaml", "b.yaml")
    fleet = load_fleet(d)
    assert message in fleet.clusters["a"].error
    assert fleet.clusters["b"].error is None
    assert fleet.clusters["b"].settings.cache_ttl == 60


def test_a_bad_label_keeps_the_good_ones(tmp_path):
    d = make_dir(tmp_path, "clusters: {a: {labels: {env: prod, job: x}}}", "a.yaml")
    a = load_fleet(d).clusters["a"]
    assert "clusters.a.labels.job: reserved" in a.error
    assert dict(a.labels) == {"env": "prod"}  # its target keeps its identity while broken


def test_an_entry_without_a_kubeconfig_is_a_problem_not_an_error(tmp_path):
    d = make_dir(tmp_path, "clusters: {zz: {cache_ttl: 1m}, a: {}}", "a.yaml")
    fleet = load_fleet(d)
    assert list(fleet.clusters) == ["a"]
    problem = fleet.rejected["fleet.yaml: clusters.zz"]
    assert problem.reason == "no_kubeconfig"
    assert problem.message.startswith("no kubeconfig file for this cluster in ")


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
    assert fleet.rejected[filename].reason == "invalid_name"
    assert "not a valid cluster name" in fleet.rejected[filename].message


def test_same_name_twice_is_rejected(tmp_path):
    d = make_dir(tmp_path, None, "a.yaml", "a.yml")
    fleet = load_fleet(d)
    assert list(fleet.clusters) == ["a"]
    assert fleet.rejected == {
        "a.yml": NotServed("duplicate_name", "cluster 'a' is already defined by a.yaml")
    }


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
    example = Path(__file__).resolve().parents[1] / "docs" / "fleet.example.yaml"
    d = make_dir(tmp_path, example.read_text(), "eu-west-prod-01.yaml")
    fleet = load_fleet(d)
    assert fleet.clusters["eu-west-prod-01"].settings.cache_ttl == 55
    assert fleet.defaults.timeout_offset == 0.5
