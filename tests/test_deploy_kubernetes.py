"""Kubernetes manifests and the container image definition, checked offline.

Every kustomization under deploy/ renders with the real `kubectl kustomize` (components
through the kube-prometheus-stack overlay); every built-in kind validates strictly against
the Kubernetes schemas bundled with kubernetes-validate (oldest and newest version);
Prometheus Operator kinds validate against the Operator's own CRD schemas (its release
bundle.yaml as pydantic models, cloudcoil-models-prometheus-operator: types, enums,
patterns, required fields, and no field the API server would prune), and against the
fields of their CRDs (prometheus-operator 6adcebc5, ~v0.93). Then the pieces are checked
against each other and against the exporter itself: ports, paths, users, selectors, the
CLI flags, the RBAC resource list, and fleet.yaml through the real loader. The Dockerfile
is parsed here; tests/test_image.py builds and runs it (make image-test).
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import kubernetes_validate
import kubernetes_validate.utils
import pydantic
import pytest
import yaml

from fleet_exporter.cli import build_parser
from fleet_exporter.config import load_fleet
from fleet_exporter.longhorn import RESOURCES

from .prometheus_harness import DEPLOY, REPO, require_binary


def kustomization_kind(directory: Path) -> str:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())["kind"]


ALL_KUSTOMIZATION_DIRS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
KUSTOMIZATIONS = [d for d in ALL_KUSTOMIZATION_DIRS if kustomization_kind(d) == "Kustomization"]
# Components are rendered through the overlays that use them.
COMPONENTS = [d for d in ALL_KUSTOMIZATION_DIRS if kustomization_kind(d) == "Component"]
KPS = DEPLOY / "kube-prometheus-stack"
# Manifests applied on their own, not through a kustomization.
STANDALONE = [DEPLOY / "prometheus" / "operator" / "probe.yaml"]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_binary("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization, rendered once: relative dir -> documents."""
    return {str(d.relative_to(DEPLOY)): kustomize(d) for d in KUSTOMIZATIONS}


def all_documents(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict]]:
    for name, docs in rendered.items():
        for doc in docs:
            yield name, doc
    for path in STANDALONE:
        for doc in yaml.safe_load_all(path.read_text()):
            yield str(path.relative_to(DEPLOY)), doc


def test_the_expected_kustomizations_exist() -> None:
    names = {str(d.relative_to(DEPLOY)) for d in KUSTOMIZATIONS}
    assert names == {
        "kubernetes",
        "target-cluster",
        "alerts",
        "prometheus/operator",
        "kube-prometheus-stack",
    }
    assert {str(d.relative_to(DEPLOY)) for d in COMPONENTS} == {
        "kubernetes/prometheus-operator",
        "grafana",
    }
    # Every component is used, so every one is rendered and validated below.
    overlay = yaml.safe_load((KPS / "kustomization.yaml").read_text())
    assert {(KPS / c).resolve() for c in overlay["components"]} == set(COMPONENTS)


# -- schema validation -------------------------------------------------------------------
VERSIONS = sorted(
    set(kubernetes_validate.utils.all_versions()), key=lambda v: tuple(map(int, v.split(".")))
)

# Fields of the Prometheus Operator CRDs at the paths our manifests use
# (example/prometheus-operator-crd/*.yaml @ 6adcebc5). CRD schemas leave unknown fields to
# API-server pruning, which would silently drop a misspelt field: these lists catch it.
CRD_FIELDS: dict[tuple[str, str], dict[str, tuple[set[str], set[str]]]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "spec": (
            {"endpoints", "selector"},
            {
                "endpoints",
                "selector",
                "jobLabel",
                "namespaceSelector",
                "targetLabels",
                "podTargetLabels",
                "sampleLimit",
                "scrapeClass",
                "attachMetadata",
            },
        ),
        "spec.endpoints[]": (
            set(),
            {
                "port",
                "targetPort",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "params",
                "relabelings",
                "metricRelabelings",
                "honorLabels",
                "tlsConfig",
                "basicAuth",
                "authorization",
            },
        ),
    },
    ("monitoring.coreos.com/v1alpha1", "ScrapeConfig"): {
        "spec": (
            set(),
            {
                "jobName",
                "httpSDConfigs",
                "staticConfigs",
                "metricsPath",
                "scrapeInterval",
                "scrapeTimeout",
                "relabelings",
                "metricRelabelings",
                "params",
                "scheme",
                "honorLabels",
                "basicAuth",
                "authorization",
                "tlsConfig",
                "scrapeClass",
            },
        ),
        "spec.httpSDConfigs[]": (
            {"url"},
            {"url", "refreshInterval", "basicAuth", "authorization", "tlsConfig"},
        ),
        "spec.relabelings[]": (
            set(),
            {
                "action",
                "modulus",
                "regex",
                "replacement",
                "separator",
                "sourceLabels",
                "targetLabel",
            },
        ),
    },
    ("monitoring.coreos.com/v1", "Probe"): {
        "spec": (
            {"prober", "targets"},
            {
                "jobName",
                "prober",
                "targets",
                "interval",
                "scrapeTimeout",
                "module",
                "params",
                "metricRelabelings",
                "basicAuth",
                "authorization",
                "tlsConfig",
                "scrapeClass",
            },
        ),
        "spec.prober": ({"url"}, {"url", "scheme", "path", "proxyUrl"}),
        "spec.targets": (set(), {"staticConfig", "ingress"}),
        "spec.targets.staticConfig": ({"static"}, {"static", "labels", "relabelingConfigs"}),
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "spec": ({"groups"}, {"groups"}),
        "spec.groups[]": ({"name", "rules"}, {"name", "rules", "interval", "limit", "labels"}),
        "spec.groups[].rules[]": (
            {"expr"},
            {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
        ),
    },
}


def at_path(doc: dict[str, Any], path: str) -> list[dict[str, Any]]:
    nodes: list[Any] = [doc]
    for part in path.split("."):
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        nodes = [n[key] for n in nodes if key in n]
        if many:
            nodes = [item for n in nodes for item in n]
    return nodes


def test_builtin_kinds_validate_strictly(rendered) -> None:
    checked = 0
    for source, doc in all_documents(rendered):
        if (doc["apiVersion"], doc["kind"]) in CRD_FIELDS:
            continue
        for version in (VERSIONS[0], VERSIONS[-1]):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{source}: {doc['kind']}/{doc['metadata']['name']} ({version}): {e}")
        checked += 1
    assert checked >= 10


def test_operator_kinds_use_only_crd_fields(rendered) -> None:
    seen = set()
    for source, doc in all_documents(rendered):
        kind = (doc["apiVersion"], doc["kind"])
        if doc["kind"] in {"ServiceMonitor", "ScrapeConfig", "Probe", "PrometheusRule"}:
            assert kind in CRD_FIELDS, f"{source}: unexpected apiVersion {kind}"
        if kind not in CRD_FIELDS:
            continue
        seen.add(doc["kind"])
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
        assert doc["metadata"]["name"] and doc["metadata"].get("namespace"), source
        for path, (required, allowed) in CRD_FIELDS[kind].items():
            nodes = at_path(doc, path)
            assert nodes, f"{source}: {doc['kind']} has nothing at {path}"
            for node in nodes:
                assert required <= set(node), f"{source}: {path} lacks {required - set(node)}"
                assert set(node) <= allowed, f"{source}: {path} has {set(node) - allowed}"
    assert seen == {"ServiceMonitor", "ScrapeConfig", "Probe", "PrometheusRule"}


# The Operator's own CRD schemas: cloudcoil-models-prometheus-operator generates a pydantic
# model per kind from the Operator's release bundle.yaml (deploy/README.md says why this
# source). Validation catches wrong types, enum values, patterns and missing required
# fields. A CRD schema leaves unknown fields to the API server, which prunes them silently:
# what the model does not keep (a misspelt or snake_case field, a coerced value) is
# reported too, by comparing the document with the model's dump of it.
def crd_model(doc: dict[str, Any]) -> type[pydantic.BaseModel]:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "monitoring.coreos.com", doc["apiVersion"]
    module = importlib.import_module(f"cloudcoil.models.prometheus_operator.{version}")
    return getattr(module, doc["kind"])


def differences(wrote: Any, kept: Any, path: str = "") -> list[str]:
    if isinstance(wrote, dict) and isinstance(kept, dict):
        out = []
        for key, value in wrote.items():
            if key in kept:
                out += differences(value, kept[key], f"{path}.{key}")
            else:
                out.append(f"{path}.{key}: not in the CRD schema (the API server prunes it)")
        return out
    if isinstance(wrote, list) and isinstance(kept, list) and len(wrote) == len(kept):
        return [
            d
            for i, pair in enumerate(zip(wrote, kept, strict=True))
            for d in differences(*pair, f"{path}[{i}]")
        ]
    if wrote != kept or type(wrote) is not type(kept):
        return [f"{path}: {wrote!r} is read as {kept!r}"]
    return []


def crd_violations(doc: dict[str, Any]) -> list[str]:
    try:
        obj = crd_model(doc).model_validate(doc)
    except pydantic.ValidationError as e:
        return [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    return differences(doc, obj.model_dump(mode="json", by_alias=True, exclude_unset=True))


def operator_documents(rendered) -> list[tuple[str, dict[str, Any]]]:
    return [
        (source, doc)
        for source, doc in all_documents(rendered)
        if doc["apiVersion"].startswith("monitoring.coreos.com/")
    ]


def test_operator_kinds_validate_against_the_operators_crd_schemas(rendered) -> None:
    checked = set()
    for source, doc in operator_documents(rendered):
        problems = crd_violations(doc)
        assert not problems, f"{source}: {doc['kind']}/{doc['metadata']['name']}: {problems}"
        checked.add((source, doc["kind"]))
    assert {kind for _, kind in checked} == {
        "ServiceMonitor",
        "ScrapeConfig",
        "Probe",
        "PrometheusRule",
    }
    assert ("kube-prometheus-stack", "ServiceMonitor") in checked


def parent(doc: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The node holding the last part of a dotted path ("spec.endpoints.0.port"), and
    that part (an int for a list index)."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for part in parents:
        node = node[part]
    return node, last


def set_at(path: str, value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = parent(doc, path)
        node[key] = value

    return mutate


def rename(path: str, new: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = parent(doc, path)
        node[new] = node.pop(key)

    return mutate


# One wrong field each: (test id, kind, mutation).
MUTATIONS = [
    ("misspelt", "ScrapeConfig", rename("spec.jobName", "jobNmae")),
    ("snake-case", "ScrapeConfig", rename("spec.jobName", "job_name")),
    ("not-a-string", "ScrapeConfig", set_at("spec.scrapeInterval", 30)),
    ("not-a-duration", "ScrapeConfig", set_at("spec.scrapeTimeout", "25 s")),
    ("no-such-action", "ScrapeConfig", set_at("spec.relabelings.0.action", "rename")),
    ("not-a-url", "ScrapeConfig", set_at("spec.httpSDConfigs.0.url", "exporter:9265/targets")),
    ("nested", "ScrapeConfig", rename("spec.relabelings.0.sourceLabels", "source_labels")),
    ("renamed", "ServiceMonitor", rename("spec.endpoints.0.scrapeTimeout", "timeout")),
    ("not-an-enum-value", "ServiceMonitor", set_at("spec.endpoints.0.scheme", "tcp")),
    ("rule-for", "PrometheusRule", set_at("spec.groups.0.rules.0.for", "five minutes")),
    ("rule-expr", "PrometheusRule", rename("spec.groups.0.rules.0.expr", "expression")),
    ("prober-scheme", "Probe", set_at("spec.prober.scheme", "ftp")),
]


@pytest.mark.parametrize(
    ("kind", "mutate"), [pytest.param(kind, mutate, id=name) for name, kind, mutate in MUTATIONS]
)
def test_the_crd_schema_check_catches_a_wrong_field(rendered, kind, mutate) -> None:
    """The validation above can fail: one wrong field in a shipped object is reported."""
    (doc,) = [d for _, d in operator_documents(rendered) if d["kind"] == kind][:1]
    assert crd_violations(doc) == []
    broken = copy.deepcopy(doc)
    mutate(broken)
    assert crd_violations(broken), f"{kind}: the mutation went unnoticed"


# -- the exporter's Deployment --------------------------------------------------------------
@pytest.fixture(scope="module")
def base(rendered) -> list[dict[str, Any]]:
    return rendered["kubernetes"]


@pytest.fixture(scope="module")
def kps(rendered) -> list[dict[str, Any]]:
    return rendered["kube-prometheus-stack"]


@pytest.fixture(scope="module")
def pod(base) -> dict[str, Any]:
    return by_kind(base, "Deployment")["spec"]["template"]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c


def test_deployment_is_locked_down(pod) -> None:
    spec = pod["spec"]
    ctx = spec["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] > 0
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    c = container(pod)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    res = c["resources"]
    assert res["requests"] == {"cpu": "500m", "memory": "256Mi"}
    assert res["limits"] == {"cpu": "2", "memory": "512Mi"}
    # The read-only root filesystem leaves /tmp as the only scratch space.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    tmp = {v["name"]: v for v in spec["volumes"]}[mounts["/tmp"]["name"]]
    assert tmp["emptyDir"]["sizeLimit"]


def test_probes_and_graceful_shutdown(pod) -> None:
    c = container(pod)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    args = build_parser().parse_args(c["args"])
    # preStop, then aiohttp's graceful shutdown, must end before the kubelet's SIGKILL.
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + args.shutdown_timeout


def test_container_args_are_real_cli_flags_and_match_ports_and_mounts(base, pod) -> None:
    c = container(pod)
    args = build_parser().parse_args(c["args"])
    assert args.command == "serve"
    (port,) = c["ports"]
    assert port == {"name": "http", "containerPort": 9265, "protocol": "TCP"}
    assert args.listen == (None, 9265)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["clusters"]["mountPath"] == args.clusters
    assert mounts["clusters"]["readOnly"] is True
    svc = by_kind(base, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 9265, "targetPort": "http", "protocol": "TCP"}
    ]


def test_kubeconfigs_and_fleet_yaml_share_one_projected_directory(base, pod) -> None:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    projected = volumes["clusters"]["projected"]
    assert projected["defaultMode"] == 0o440
    secret, configmap = projected["sources"]
    assert secret == {"secret": {"name": "fleet-exporter-kubeconfigs"}}
    cm = by_kind(base, "ConfigMap")
    # kustomize gave the ConfigMap a content hash and rewrote the reference.
    assert configmap["configMap"]["name"] == cm["metadata"]["name"]
    assert configmap["configMap"]["items"] == [{"key": "fleet.yaml", "path": "fleet.yaml"}]
    # The Secret holds real credentials: it is never part of the base.
    assert not [d for d in base if d["kind"] == "Secret"]


def test_shipped_fleet_yaml_loads_with_the_exporters_own_loader(base, tmp_path) -> None:
    fleet_yaml = by_kind(base, "ConfigMap")["data"]["fleet.yaml"]
    (tmp_path / "fleet.yaml").write_text(fleet_yaml)
    (tmp_path / "east-1.yaml").write_text("apiVersion: v1\nkind: Config\n")
    fleet = load_fleet(tmp_path)
    assert list(fleet.clusters) == ["east-1"]
    assert fleet.defaults.cache_ttl < 30  # under the probe job's scrape interval
    # Above LonghornDataStale's threshold, or that alert could never fire.
    rules = yaml.safe_load((DEPLOY / "alerts" / "longhorn-fleet.rules.yml").read_text())
    (stale,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "LonghornDataStale"
    ]
    threshold = float(re.search(r">\s*(\d+)\s*$", stale["expr"].strip()).group(1))
    assert fleet.defaults.max_staleness > threshold


def test_selectors_match_the_pods(base, pod) -> None:
    labels = pod["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        sel = by_kind(base, kind)["spec"]["selector"]["matchLabels"]
        assert sel.items() <= labels.items(), kind
    assert by_kind(base, "Service")["spec"]["selector"].items() <= labels.items()
    assert by_kind(base, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= (
        labels.items()
    )
    pdb = by_kind(base, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] < by_kind(base, "Deployment")["spec"]["replicas"]


def test_network_policy_admits_prometheus_and_reaches_api_servers_and_dns(base) -> None:
    np = by_kind(base, "NetworkPolicy")["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = np["ingress"]
    assert ingress["ports"] == [{"port": 9265, "protocol": "TCP"}]
    (peer,) = ingress["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # No namespace named: Prometheus pods of the exporter's own namespace, wherever it is.
    assert "namespaceSelector" not in peer
    egress_ports = {(p["port"], p["protocol"]) for rule in np["egress"] for p in rule["ports"]}
    assert egress_ports == {(443, "TCP"), (6443, "TCP"), (53, "UDP"), (53, "TCP")}


def test_service_monitor_scrapes_the_service_metrics_port(base, kps) -> None:
    sm = by_kind(kps, "ServiceMonitor")["spec"]
    svc = by_kind(base, "Service")
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The alert rules expect the exporter's own job to be called fleet-exporter, which is
    # what the operator names it: the Service's name (no jobLabel override).
    assert "jobLabel" not in sm and svc["metadata"]["name"] == "fleet-exporter"


# -- kube-prometheus-stack ------------------------------------------------------------------
OPERATOR_KINDS = {"ServiceMonitor", "ScrapeConfig", "PrometheusRule"}


def test_base_renders_no_prometheus_operator_kinds(base) -> None:
    """The base applies on a cluster without the Operator's CRDs."""
    assert not [d for d in base if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in base} == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


def test_kube_prometheus_stack_overlay_is_the_base_plus_operator_kinds_and_dashboards(
    base, kps
) -> None:
    def names(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in docs}

    extra = names(kps) - names(base)
    assert {kind for kind, _ in extra} == OPERATOR_KINDS | {"ConfigMap"}
    # Nothing of the base is lost or changed, but for the image's registry.
    assert names(base) <= names(kps)
    for doc in base:
        (same,) = [d for d in kps if d["kind"] == doc["kind"] and d["metadata"] == doc["metadata"]]
        if doc["kind"] == "Deployment":
            same = copy.deepcopy(same)
            (c,) = same["spec"]["template"]["spec"]["containers"]
            assert c["image"] == "registry.example.com/fleet-exporter:0.1.0"
            c["image"] = container(doc["spec"]["template"])["image"]
        assert same == doc


def test_release_label_is_on_exactly_what_kube_prometheus_stack_selects(kps) -> None:
    """kube-prometheus-stack's Prometheus selects ServiceMonitors, ScrapeConfigs and
    PrometheusRules by release=<Helm release> (serviceMonitorSelector, scrapeConfigSelector,
    ruleSelector); other objects do not need it."""
    labelled = {d["kind"] for d in kps if "release" in d["metadata"].get("labels", {})}
    assert labelled == OPERATOR_KINDS
    releases = {d["metadata"]["labels"]["release"] for d in kps if d["kind"] in OPERATOR_KINDS}
    assert releases == {"kube-prometheus-stack"}
    # The release name is set in one place: one patch op, for the whole API group.
    overlay = yaml.safe_load((KPS / "kustomization.yaml").read_text())
    ops = [
        (patch["target"], op)
        for patch in overlay["patches"]
        for op in yaml.safe_load(patch["patch"])
        if op["path"] == "/metadata/labels/release"
    ]
    assert ops == [({"group": "monitoring.coreos.com"}, ANY)]


GRAFANA = DEPLOY / "grafana"


def test_dashboards_are_sidecar_configmaps_generated_from_the_json(kps) -> None:
    dashboards = {
        d["metadata"]["name"]: d
        for d in kps
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    }
    files = sorted(GRAFANA.glob("*.json"))
    assert len(dashboards) == len(files) == 2
    for path in files:
        cm = dashboards[f"{path.stem}-dashboard"]  # a fixed name: a change replaces it
        # Generated by kustomize from the file, byte for byte (not a copy in the repo).
        assert cm["data"] == {path.name: path.read_text(encoding="utf-8")}
        assert json.loads(cm["data"][path.name])["uid"]
        # `kubectl apply` (client side) keeps the object in an annotation of at most 256 KiB.
        assert len(json.dumps(cm).encode()) < 256 * 1024
    # No copy of a dashboard in any manifest: the JSON files are the only source.
    copies = [p for p in DEPLOY.rglob("*.y*ml") if '"panels"' in p.read_text(encoding="utf-8")]
    assert copies == []


def string_values(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "apiVersion":
                yield from string_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from string_values(item)
    elif isinstance(node, str):
        yield node


def mentions_namespace(value: str, namespace: str) -> bool:
    return bool(re.search(rf"(^|[./:]){re.escape(namespace)}($|[./:])", value))


def copied_overlay(tmp_path: Path) -> Path:
    """A copy of deploy/ to edit; returns its kube-prometheus-stack/kustomization.yaml."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    return tmp_path / "deploy" / "kube-prometheus-stack" / "kustomization.yaml"


def test_readme_fleet_yaml_snippet_replaces_the_shipped_settings(tmp_path) -> None:
    """deploy/README.md's configMapGenerator snippet, added to the overlay with a
    fleet.yaml beside it, replaces the base's settings and the pods mount the new one."""
    readme = (DEPLOY / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "replace" in b]
    overlay = copied_overlay(tmp_path)
    overlay.write_text(overlay.read_text() + textwrap.dedent(snippet))
    ours = "defaults:\n  cache_ttl: 55s\nclusters:\n  east-1:\n    labels: {env: prod}\n"
    (overlay.parent / "fleet.yaml").write_text(ours)
    docs = kustomize(overlay.parent)
    (cm,) = [d for d in docs if d["metadata"]["name"].startswith("fleet-exporter-config")]
    assert cm["data"] == {"fleet.yaml": ours}
    volumes = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (projected,) = [v["projected"] for v in volumes if v["name"] == "clusters"]
    assert {"configMap": {"name": cm["metadata"]["name"], "items": ANY}} in projected["sources"]


def test_namespace_is_set_in_one_place(tmp_path) -> None:
    """Changing the overlay's one `namespace:` line moves everything: every object, the
    ScrapeConfig's URLs, and (by naming none) the NetworkPolicy's Prometheus peer."""
    overlay = copied_overlay(tmp_path)
    text = overlay.read_text()
    assert len(re.findall(r"^namespace: (\S+)$", text, re.M)) == 1
    overlay.write_text(
        re.sub(r"^namespace: \S+$", "namespace: cattle-monitoring-system", text, flags=re.M)
    )
    docs = kustomize(overlay.parent)
    assert {d["metadata"].get("namespace") for d in docs} == {"cattle-monitoring-system"}
    for doc in docs:
        for value in string_values(doc):
            assert not mentions_namespace(value, "monitoring"), (doc["kind"], value)
    sc = by_kind(docs, "ScrapeConfig")["spec"]
    service = "fleet-exporter.cattle-monitoring-system.svc:9265"
    assert sc["httpSDConfigs"][0]["url"] == f"http://{service}/targets"
    (address,) = [r for r in sc["relabelings"] if r.get("targetLabel") == "__address__"]
    assert address["replacement"] == service
    # ...and the check above would have seen a left-over `monitoring`.
    assert mentions_namespace("http://fleet-exporter.monitoring.svc:9265/targets", "monitoring")


# -- the operator's probe job -------------------------------------------------------------
def relabel_key(rule: dict[str, Any]) -> tuple:
    """A relabel rule in snake_case (prometheus.yml) or camelCase (operator) form."""

    def get(*names: str) -> Any:
        return next((rule[n] for n in names if n in rule), None)

    return (
        tuple(get("source_labels", "sourceLabels") or ()),
        get("target_label", "targetLabel"),
        get("replacement"),
        get("action") or "replace",
    )


def test_scrape_config_is_the_prometheus_yml_probe_job(rendered) -> None:
    sc = by_kind(rendered["prometheus/operator"], "ScrapeConfig")["spec"]
    plain = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in plain["scrape_configs"] if j["job_name"] == "longhorn-fleet"]
    assert sc["jobName"] == job["job_name"]
    assert sc["metricsPath"] == job["metrics_path"] == "/probe"
    assert sc["scrapeInterval"] == job["scrape_interval"]
    assert sc["scrapeTimeout"] == job["scrape_timeout"]
    assert sc["httpSDConfigs"][0]["url"] == "http://fleet-exporter.monitoring.svc:9265/targets"
    ours = [relabel_key(r) for r in sc["relabelings"]]
    theirs = [relabel_key(r) for r in job["relabel_configs"]]
    service = "fleet-exporter.monitoring.svc:9265"
    assert [k for k in ours if k[1] != "__tmp_hash"] == [
        (s, t, r.replace("EXPORTER_ADDRESS", service) if r else r, a) for s, t, r, a in theirs
    ]
    # Operator sharding hashes __tmp_hash: the cluster, set before __address__ changes.
    assert (("__param_cluster",), "__tmp_hash", None, "replace") in ours
    assert ours.index((("__param_cluster",), "__tmp_hash", None, "replace")) < len(ours) - 1


def test_probe_resource_targets_the_exporter_and_sets_no_cluster_label(base) -> None:
    (probe,) = yaml.safe_load_all((DEPLOY / "prometheus" / "operator" / "probe.yaml").read_text())
    spec = probe["spec"]
    assert spec["jobName"] == "longhorn-fleet"
    svc = by_kind(base, "Service")
    assert spec["prober"]["url"] == f"{svc['metadata']['name']}.monitoring.svc:9265"
    assert spec["prober"]["path"] == "/probe"
    static = spec["targets"]["staticConfig"]
    assert static["static"] and "cluster" not in static.get("labels", {})


def test_no_manifest_sets_a_cluster_target_label(rendered) -> None:
    for source, doc in all_documents(rendered):
        text = json.dumps(doc)
        assert '"targetLabel": "cluster"' not in text, source
        assert '"target_label": "cluster"' not in text, source


# -- what each target cluster gets -----------------------------------------------------------
def test_target_cluster_role_is_read_only_on_exactly_the_listed_resources(rendered) -> None:
    docs = rendered["target-cluster"]
    assert {d["metadata"]["namespace"] for d in docs} == {"longhorn-system"}
    role = by_kind(docs, "Role")
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["longhorn.io"]
    assert rule["verbs"] == ["get", "list"]
    assert "resourceNames" not in rule
    # Exactly what the exporter lists: no subresource (proxy), no wildcard.
    assert sorted(rule["resources"]) == sorted(RESOURCES)
    binding = by_kind(docs, "RoleBinding")
    sa = by_kind(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "longhorn-system"}
    ]
    secret = by_kind(docs, "Secret")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {
        "kubernetes.io/service-account.name": sa["metadata"]["name"]
    }
    assert "data" not in secret and "stringData" not in secret


def test_role_resources_are_served_longhorn_crds() -> None:
    crds = Path(REPO).parent / "shared" / "longhorn" / "crds.yaml"
    served = {
        d["spec"]["names"]["plural"]
        for d in yaml.safe_load_all(crds.read_text())
        if d and any(v["name"] == "v1beta2" and v["served"] for v in d["spec"]["versions"])
    }
    role = yaml.safe_load((DEPLOY / "target-cluster" / "role.yaml").read_text())
    assert set(role["rules"][0]["resources"]) <= served


# -- the Dockerfile ----------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_dockerfile(base, pod) -> None:
    instructions = dockerfile_instructions((REPO / "Dockerfile").read_text())
    args = {
        k: v
        for word, rest in instructions
        if word == "ARG" and "=" in rest
        for k, v in [rest.split("=", 1)]
    }
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    assert len(stages) >= 2, "multi-stage build expected"
    # A pinned Python 3.11 slim base: a tag, never latest.
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.?\d*-slim-bookworm(@sha256:[0-9a-f]{64})?", image)
    build, final = stages[0], stages[-1]
    assert any(w == "RUN" and "pip wheel" in r for w, r in build), "no wheel built"
    # The final stage takes only the installed environment from the build stage.
    copies = [r for w, r in final if w in {"COPY", "ADD"}]
    assert copies and all(r.startswith("--from=") for r in copies), copies
    assert not any(w == "RUN" and re.search(r"pip\b.*install", r) for w, r in final)
    (user,) = [r for w, r in final if w == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    assert int(uid) == pod["spec"]["securityContext"]["runAsUser"]
    assert ("EXPOSE", "9265") in final
    (entrypoint,) = [json.loads(r) for w, r in final if w == "ENTRYPOINT"]
    (cmd,) = [json.loads(r) for w, r in final if w == "CMD"]
    assert entrypoint == ["fleet-exporter"]
    assert cmd == ["serve", "--clusters", "/etc/fleet-exporter/clusters", "--listen", ":9265"]
    # The image's default command is the Deployment's, and both are real CLI flags.
    assert build_parser().parse_args(cmd) == build_parser().parse_args(container(pod)["args"])
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^fleet-exporter = "fleet_exporter\.cli:main"$', pyproject, re.M)
    # Everything the build stage copies exists.
    for w, r in build:
        if w == "COPY" and not r.startswith("--from="):
            for src in shlex.split(r)[:-1]:
                assert (REPO / src).exists(), src


def test_dockerignore_keeps_kubeconfigs_and_the_venv_out() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "start from deny-all"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "fleet_exporter"}
