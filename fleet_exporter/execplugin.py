"""Exec credential plugins (``users[].user.exec`` in a kubeconfig), run with the ExecCredential
protocol of client-go, and kept from costing more than their own cluster's credentials.

The ``kubernetes`` package's runner has no timeout (a hung plugin blocks a thread forever)
and turns a failing plugin into unauthenticated requests, so plugins run here instead, in
a worker thread of their own pool (never on the event loop), contained:

- **Time.** Killed after ``exec_timeout``.
- **Memory.** stdout is read up to ``STDOUT_CAP`` (an ExecCredential is a few KiB) and
  stderr up to ``STDERR_CAP``, of which only the last ``STDERR_KEPT`` bytes are kept for
  the error. Past either cap the plugin is killed and the error says so (``yes`` as a
  plugin once took the process to 4 GB).
- **Descendants.** Each plugin starts a session of its own (``start_new_session``), so
  one ``killpg`` reaches everything it started in its process group. A descendant that
  leaves the group (``setsid``, a daemon's double fork) still carries the environment
  variable ``FLEET_EXPORTER_EXEC_RUN`` with this run's id: after the group, every process
  whose environment holds that id is killed too (found in ``/proc``, killed through a
  pidfd so a reused pid is never hit). The limit: a descendant that deliberately both
  leaves the group and drops the variable (``setsid env -i ...``) escapes; only a cgroup
  could hold that one, and the exporter does not manage cgroups.
- **Secrets.** Everything a plugin could show is registered for ``redact`` before
  anything of it can leave: the token or key it prints, every ``env:`` value of 8 or more
  characters (shorter ones only when the variable's name says secret, token, password,
  key or credential: shorter values are ordinary words, like ``true`` or ``prod``), and
  the values of arguments named like that (``--client-secret=...``; other arguments, such
  as cluster names and regions, are left readable). The stderr excerpt in an error is
  redacted, and any ``NAME=value`` in it whose name says secret is masked as well: a
  plugin may print a secret the exporter never saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import selectors
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .redact import redact, register, register_pem

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
STDOUT_CAP = 1024 * 1024  # an ExecCredential with a client certificate chain is ~10 KiB
STDERR_CAP = 1024 * 1024  # a chatty plugin may log; past this it is killed
STDERR_KEPT = 4096  # the tail of stderr kept for the error (the reason is usually last)
EXCERPT = 300  # characters of that tail an error shows
RUN_MARKER = "FLEET_EXPORTER_EXEC_RUN"  # in every plugin's environment: finds its descendants
# Names whose values are secrets: env variables, argument flags, NAME=value in stderr.
_SECRET_NAME = re.compile(r"secret|token|passw|pwd|credential|key", re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(
    r"([\w.-]*(?:secret|token|passw|pwd|credential|key)[\w.-]*\s*[=:]\s*)"
    r"(?!<redacted>)[^\s\"',;]+",
    re.IGNORECASE,
)

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
    args = tuple(str(a) for a in spec.get("args") or [])
    _register_inputs(env, args)
    info: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential"}
    info["spec"] = {"interactive": False}
    if cluster_info is not None:
        info["spec"]["cluster"] = cluster_info
    # Like client-go: a relative command with a slash is relative to the kubeconfig.
    path = os.path.join(base, command) if "/" in command else command
    return Plugin(
        name=command,
        argv=(path, *args),
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


def _register_inputs(env: dict[str, str], args: tuple[str, ...]) -> None:
    """Register what the kubeconfig hands the plugin, so it cannot come back out through
    stderr: env values, and the values of secret-named arguments."""
    for name, value in env.items():
        register(value, min_len=4 if _SECRET_NAME.search(name) else 8)
    flag_before = ""
    for arg in args:
        name, eq, value = arg.partition("=")
        if eq and _SECRET_NAME.search(name):
            register(value)
        elif flag_before.startswith("-") and _SECRET_NAME.search(flag_before):
            register(arg)
        flag_before = arg


class _Stop(Exception):
    """The plugin must be killed; the message says why."""


def _run_sync(plugin: Plugin, timeout: float) -> Result:
    name = plugin.name
    run_id = secrets.token_hex(8)
    env = {**os.environ, **plugin.env, "KUBERNETES_EXEC_INFO": plugin.exec_info}
    env[RUN_MARKER] = run_id
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(
            plugin.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=plugin.cwd,
            env=env,
            start_new_session=True,  # its own process group: one killpg reaches its children
        )
    except FileNotFoundError:
        hint = f" ({plugin.install_hint})" if plugin.install_hint else ""
        raise ExecPluginError(f'exec plugin "{name}": command not found{hint}') from None
    except OSError as e:
        raise ExecPluginError(f'exec plugin "{name}": cannot start: {e.strerror}') from None
    try:
        out, err = _read(proc, deadline, timeout)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # closed its output, but lives on
            raise _Stop(f"timed out after {timeout:g}s") from None
    except BaseException as e:  # _Stop, or anything unforeseen: nothing may outlive us
        _kill_tree(proc, run_id)
        if isinstance(e, _Stop):
            raise ExecPluginError(f'exec plugin "{name}" {e}') from None
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
    result, problem = _parse_output(out, plugin.api_version)  # registers secrets first
    if proc.returncode != 0:
        rc = proc.returncode
        status = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        detail = _excerpt(err)
        raise ExecPluginError(f'exec plugin "{name}" {status}' + (f": {detail}" if detail else ""))
    if result is None:
        raise ExecPluginError(f'exec plugin "{name}" {problem}')
    return result


def _read(proc: subprocess.Popen[bytes], deadline: float, timeout: float) -> tuple[bytes, bytes]:
    """stdout and the tail of stderr, until both end; raises _Stop past a cap or the
    deadline, so memory stays bounded whatever the plugin writes."""
    out, err, err_total = bytearray(), bytearray(), 0
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Stop(f"timed out after {timeout:g}s")
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 64 * 1024)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "stdout":
                    out += chunk
                    if len(out) > STDOUT_CAP:
                        raise _Stop(
                            f"wrote more than {STDOUT_CAP // 1024} KiB to stdout "
                            "(an ExecCredential is a few KiB); killed"
                        )
                else:
                    err_total += len(chunk)
                    if err_total > STDERR_CAP:
                        raise _Stop(f"wrote more than {STDERR_CAP // 1024} KiB to stderr; killed")
                    err += chunk
                    del err[:-STDERR_KEPT]
    return bytes(out), bytes(err)


def _excerpt(err: bytes) -> str:
    """The end of stderr on one line: redacted, secret-named values masked, then cut (in
    that order, so no cut can split a secret the registry would have recognised)."""
    text = _SECRET_ASSIGNMENT.sub(r"\1<redacted>", redact(err.decode("utf-8", "replace")))
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else "..." + text[-EXCERPT:]


def _kill_tree(proc: subprocess.Popen[bytes], run_id: str) -> None:
    """SIGKILL the plugin's process group, then every process still carrying this run's
    marker (descendants that left the group), and reap the plugin."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    marker = f"{RUN_MARKER}={run_id}".encode()
    for _ in range(10):  # a descendant may fork while we look: look again
        escaped = [pid for pid in _pids_with(marker) if pid != proc.pid]
        if not escaped:
            break
        for pid in escaped:
            _kill_marked(pid, marker)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:  # gone, another user's, or no /proc: nothing of ours
        return []


def _pids_with(marker: bytes) -> list[int]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    return [int(e) for e in entries if e.isdigit() and marker in _environ(int(e))]


def _kill_marked(pid: int, marker: bytes) -> None:
    """Kill ``pid`` through a pidfd, after checking again that it is the marked process
    (the pid may have been reused since the scan); reap it if it became our child (the
    exporter is PID 1 in its container, so orphans come to it)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        if marker in _environ(pid):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            for _ in range(100):  # SIGKILL is prompt; bounded all the same
                try:
                    if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None:
                        break
                except OSError:  # ECHILD: not ours to reap (init's, or already reaped)
                    break
                time.sleep(0.01)
    finally:
        os.close(pidfd)


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
