"""Kubeconfig files for simulated clusters, written the way people keep them: one file per
cluster, credentials inline, readable by the owner only."""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .tls import KeyPair

# libyaml's dumper when PyYAML has it: 500 kubeconfigs take a second in pure Python.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(
    name: str,
    server: str,
    ca_pem: str,
    *,
    token: str | None = None,
    client: KeyPair | None = None,
    tls_server_name: str = "",
    namespace: str = "longhorn-system",
) -> dict[str, Any]:
    """A single-context kubeconfig for cluster `name`, authenticating with `token` or with
    the client certificate `client` (exactly one of them)."""
    if (token is None) == (client is None):
        raise ValueError(f"kubeconfig for {name}: give exactly one of token or client")
    cluster: dict[str, Any] = {"server": server, "certificate-authority-data": _b64(ca_pem)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    user: dict[str, Any]
    if client is not None:
        user = {
            "client-certificate-data": _b64(client.cert_pem),
            "client-key-data": _b64(client.key_pem),
        }
    else:
        user = {"token": token}
    user_name = f"fleet-exporter@{name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": name, "user": user_name, "namespace": namespace},
            }
        ],
        "current-context": name,
        "preferences": {},
    }


def write_private(path: Path, config: dict[str, Any]) -> None:
    """Write `config` as YAML to `path` with mode 0600, atomically (a reader never sees a
    half-written file, which matters when a token is rotated under a running exporter)."""
    text = yaml.dump(config, Dumper=_DUMPER, sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
