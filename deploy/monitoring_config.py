"""The one configuration of fleet-exporter's alert rules and dashboards.

deploy/monitoring-config.yml names the probe job, the exporter's own job and the runbook's
address. deploy/alerts/make-prometheusrule.py renders the rule template with it, and
deploy/grafana/generate.py builds the dashboards with it (and reads the rendered rules, so
the overview's score counts exactly the alert conditions). Both import this module.

The template is the rule file with placeholders `%(key)s` for the keys of the
configuration (the notation of the monitoring mixins' `_config`). Substitution is textual,
so the template's comments reach the generated file.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
CONFIG = DEPLOY / "monitoring-config.yml"
RULES_TEMPLATE = DEPLOY / "alerts" / "longhorn-fleet.rules.tmpl.yml"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class ConfigError(ValueError):
    """The configuration or the template is unusable; the message says why."""


@dataclass(frozen=True)
class Config:
    probe_selector: str
    exporter_selector: str
    runbook_base_url: str

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base_url}#{alert.lower()}"


def load(path: Path = CONFIG) -> Config:
    """Read and check a configuration file."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = set(Config.__dataclass_fields__)
    if not isinstance(doc, dict) or set(doc) != keys:
        raise ConfigError(f"{path}: expected exactly the keys {', '.join(sorted(keys))}")
    for key, value in doc.items():
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise ConfigError(f"{path}: {key} must be a one-line string")
    for key in ("probe_selector", "exporter_selector"):
        if re.search(r"[{}]", doc[key]):
            raise ConfigError(f'{path}: {key} lists matchers without braces, e.g. job="x"')
    if re.search(r"[\s#\"']", doc["runbook_base_url"]):
        raise ConfigError(f"{path}: runbook_base_url must have no spaces, quotes or '#'")
    return Config(**doc)


def render_rules(config: Config, template: Path = RULES_TEMPLATE) -> str:
    """The rule file for `config`: the template with every placeholder substituted. Fails
    on an unknown placeholder, or an alert whose runbook_url is not base#<name lowered>."""
    values = asdict(config)

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ConfigError(f"{template.name}: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    text = PLACEHOLDER.sub(value, template.read_text(encoding="utf-8"))
    for rule in alert_rules_of(text):
        if rule["annotations"].get("runbook_url") != config.runbook_url(rule["alert"]):
            raise ConfigError(f"{template.name}: {rule['alert']} has the wrong runbook_url")
    return text


def groups_of(rules_text: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(rules_text)
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise ConfigError("expected a mapping with a 'groups' list")
    return doc["groups"]


def alert_rules_of(rules_text: str) -> list[dict[str, Any]]:
    """Every alerting rule of a rule file's text, each with its group's name (`group`)."""
    return [
        {**rule, "group": group["name"]}
        for group in groups_of(rules_text)
        for rule in group["rules"]
        if "alert" in rule
    ]


def write_or_check(files: dict[Path, str], check: bool, script: str) -> int:
    """Write `files` (path -> text), or with `check` only compare them with what is on
    disk: 1, naming the stale files, when any differs; else 0."""
    stale = []
    for path, text in files.items():
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run {script}", file=sys.stderr)
        return 1
    return 0
