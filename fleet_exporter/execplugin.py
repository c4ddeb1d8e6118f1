"""Exec credential plugins (``users[].user.exec`` in a kubeconfig), run with the ExecCredential
protocol of client-go, and kept from costing more than their own cluster's credentials.

The ``kubernetes`` package's runner has no timeout (a hung plugin blocks a thread forever)
and turns a failing plugin into unauthenticated requests, so plugins run here instead:
in a worker thread of their own pool (never on the event loop), killed after
``exec_timeout``, failing loudly.

Every secret a plugin could show is registered for ``redact`` before anything of it can
leave: the token or key it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .redact import redact, register, register_pem

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")

# Plugins get their own threads so a slow one never starves asyncio.to_thread users.
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="exec-plugin")


class ExecPluginError(Exception):
    """Safe, one-line, names the plugin and what is wrong; never contains a secret."""


@dataclass(frozen=True)
class Plugin:
    """An exec credential plugin, resolved once per kubeconfig load."""

    name: str  # argv[0] as written in the kubeconfig: the only part errors show
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    api_version: str
    exec_info: str  # KUBERNETES_EXEC_INFO
    install_hint: str


@dataclass(frozen=True)
class Result:
    token: str | None
    cert_pem: str | None
    key_pem: str | None
    expires_at: float | None


def resolve(spec: dict[str, Any], base: str, cluster_info: dict[str, Any] | None) -> Plugin:
    """Resolve an exec section once; ``cluster_info`` is the ExecCredential ``spec.cluster``
    (given when the section says ``provideClusterInfo``)."""
    command = spec.get("command")
    if not isinstance(command, str) or not command:
        raise ExecPluginError("exec plugin has no command")
    api_version = spec.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise ExecPluginError(
            f'exec plugin "{command}": apiVersion must be one of {", ".join(API_VERSIONS)}'
        )
    if spec.get("interactiveMode") == "Always":
        raise ExecPluginError(f'exec plugin "{command}" needs a terminal (interactiveMode)')
    env = {}
    for item in spec.get("env") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ExecPluginError(f'exec plugin "{command}": env entries need name and value')
        env[item["name"]] = str(item.get("value", ""))
    info: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential"}
    info["spec"] = {"interactive": False}
    if cluster_info is not None:
        info["spec"]["cluster"] = cluster_info
    # Like client-go: a relative command with a slash is relative to the kubeconfig.
    path = os.path.join(base, command) if "/" in command else command
    return Plugin(
        name=command,
        argv=(path, *(str(a) for a in spec.get("args") or [])),
        env=env,
        cwd=base,
        api_version=api_version,
        exec_info=json.dumps(info),
        install_hint=(str(spec.get("installHint") or "").strip().splitlines() or [""])[0][:200],
    )


async def run(plugin: Plugin, exec_timeout: float) -> Result:
    """Off the event loop, on the plugin pool; the worker bounds itself with the timeout."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, _run_sync, plugin, exec_timeout)


def _run_sync(plugin: Plugin, timeout: float) -> Result:
    name = plugin.name
    env = {**os.environ, **plugin.env, "KUBERNETES_EXEC_INFO": plugin.exec_info}
    try:
        proc = subprocess.Popen(
            plugin.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=plugin.cwd,
            env=env,
            start_new_session=True,  # its own process group: a kill reaches its children too
        )
    except FileNotFoundError:
        hint = f" ({plugin.install_hint})" if plugin.install_hint else ""
        raise ExecPluginError(f'exec plugin "{name}": command not found{hint}') from None
    except OSError as e:
        raise ExecPluginError(f'exec plugin "{name}": cannot start: {e.strerror}') from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ExecPluginError(f'exec plugin "{name}" timed out after {timeout:g}s') from None
    result, problem = _parse_output(out, plugin.api_version)  # registers secrets first
    if proc.returncode != 0:
        rc = proc.returncode
        status = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        detail = " ".join(redact(err.decode("utf-8", "replace")).split())[:300]
        raise ExecPluginError(f'exec plugin "{name}" {status}' + (f": {detail}" if detail else ""))
    if result is None:
        raise ExecPluginError(f'exec plugin "{name}" {problem}')
    return result


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:  # a descendant left the group and holds our pipes
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait(timeout=2)


def _parse_output(out: bytes, api_version: str) -> tuple[Result | None, str]:
    """ExecCredential -> result, or None and what is wrong; never echoes the output."""
    try:
        data = json.loads(out)
    except ValueError:
        return None, "printed invalid JSON instead of an ExecCredential"
    if not isinstance(data, dict) or data.get("kind") != "ExecCredential":
        return None, "did not print an ExecCredential"
    status = data.get("status")
    if not isinstance(status, dict):
        return None, "printed an ExecCredential without status"
    token, cert, key = (status.get(k) for k in ("token", "clientCertificateData", "clientKeyData"))
    register(token if isinstance(token, str) else None, pool="rotating")
    if isinstance(key, str):
        register_pem(key)
    if data.get("apiVersion") != api_version:
        return None, f"printed an ExecCredential with apiVersion other than {api_version}"
    if isinstance(token, str) and token and not token.isprintable():
        return None, "printed a token containing control characters"
    if not (isinstance(token, str) and token) and not (
        isinstance(cert, str) and cert and isinstance(key, str) and key
    ):
        return None, "printed an ExecCredential with neither token nor client certificate+key"
    expires_at = None
    if status.get("expirationTimestamp"):
        try:
            ts = datetime.fromisoformat(str(status["expirationTimestamp"]))
        except ValueError:
            return None, "printed an invalid expirationTimestamp"
        expires_at = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    if token:
        return Result(token, None, None, expires_at), ""
    return Result(None, cert, key, expires_at), ""
