"""One kubeconfig -> what the async HTTP layer needs: base URL, SSLContext, Authorization.

The ``kubernetes`` package reads the kubeconfig (``KubeConfigLoader``), but several of its
defaults are wrong for a long-running async service that holds many clusters, so this
module wraps it:

- ``load_kube_config`` without a private ``Configuration`` overwrites the process-wide
  default, and ``persist_config`` rewrites the kubeconfig after a refresh. We use a private
  ``Configuration`` and no persister, so the file is never written.
- Inline certificate and key data go to temp files through a module-global cache that races
  across threads and keeps key material on disk until exit. We load serially under one
  process-wide lock, in a worker thread, into a private 0700 directory, read the files into
  an ``ssl.SSLContext`` and delete them at once.
- Its exec-plugin runner has no timeout (a hung plugin blocks a thread forever) and turns a
  failing plugin into unauthenticated requests. We run plugins ourselves (``execplugin``),
  with the same ExecCredential protocol, contained, and fail loudly.
- ``Configuration`` silently takes ``HTTPS_PROXY`` from the environment. The proxy here comes
  from the kubeconfig's ``proxy-url`` only: each cluster's file says exactly how to reach it,
  and an environment proxy meant for other traffic must not capture API-server calls.

Every secret seen (tokens, passwords, key PEM, exec output) is registered for ``redact()``
(``redact``).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import contextlib
import copy
import dataclasses
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes.client import Configuration
from kubernetes.config import kube_config

from . import execplugin
from .redact import redact, register, register_pem

log = logging.getLogger(__name__)

# Refresh exec tokens this long before they expire, like client-go and the package.
EXPIRY_SKEW = 300.0
# After a refresh attempt, wait this long before the next one (a failing or short-TTL plugin
# must not run on every request).
REFRESH_BACKOFF = 10.0
# Upper bound for reading and parsing one kubeconfig (an expired OIDC token makes the package
# call the identity provider synchronously, without a timeout of its own).
LOAD_TIMEOUT = 30.0
MAX_KUBECONFIG_BYTES = 4 * 1024 * 1024

# Tests replace these to move time without sleeping.
_now = time.time
_monotonic = time.monotonic

# The package's temp-file cache is module-global: every load in the process goes through here.
_LOAD_LOCK = threading.Lock()


class CredentialsError(Exception):
    """Safe, one-line, names what is wrong; never contains a secret."""


def check_permissions(path: Path) -> str | None:
    """Warning text when people other than this process can read the kubeconfig, else None.

    Group-readable is fine when the group is the process's own: that is how Kubernetes
    mounts a Secret for a non-root pod (``defaultMode: 0440`` with the pod's ``fsGroup``).
    """
    try:
        st = path.stat()
    except OSError:
        return None  # loading reports a missing file with a better message
    mode = st.st_mode & 0o777
    own_groups = {os.getegid(), *os.getgroups()}
    if mode & 0o004 or (mode & 0o040 and st.st_gid not in own_groups):
        return (
            f"kubeconfig {path} is readable by others (mode {mode:04o}, group {st.st_gid}); "
            "it holds credentials, restrict it to 0600 or 0400"
        )
    return None


# --- public records ------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """How to reach one API server; pass ``ssl``, ``server_hostname`` and ``proxy`` to aiohttp."""

    server: str
    ssl: ssl.SSLContext
    server_hostname: str | None
    proxy: str | None


@dataclass(frozen=True)
class _Snapshot:
    """Everything one successful load produced; replaced whole on reload or refresh."""

    endpoint: Endpoint
    auth_kind: str
    context: str
    header: str | None
    expires_at: float | None  # epoch seconds; only exec tokens expire here
    plugin: execplugin.Plugin | None


class Credentials:
    """One cluster's endpoint and Authorization header, refreshed without blocking the loop."""

    def __init__(self, path: Path, snapshot: _Snapshot, exec_timeout: float) -> None:
        self.path = path
        self._snap = snapshot
        self._exec_timeout = exec_timeout
        self._refresh_lock = asyncio.Lock()
        self._next_refresh = 0.0  # monotonic time before which no refresh is attempted
        self._refresh_error: str | None = None
        self._reload_task: asyncio.Future[None] | None = None

    @property
    def endpoint(self) -> Endpoint:
        """Current endpoint; a reload may replace it (new SSLContext), so read it per request."""
        return self._snap.endpoint

    @property
    def auth_kind(self) -> str:
        return self._snap.auth_kind

    async def authorization(self) -> str | None:
        """Authorization header value, or None when the kubeconfig has no header auth."""
        snap = self._snap
        if snap.expires_at is None or _now() < snap.expires_at - EXPIRY_SKEW:
            return snap.header  # fast path: no lock, no thread hop
        return await self._refresh()

    async def _refresh(self) -> str | None:
        async with self._refresh_lock:  # single flight per cluster
            snap = self._snap
            if snap.expires_at is None or _now() < snap.expires_at - EXPIRY_SKEW:
                return snap.header  # another caller refreshed while we waited
            if snap.plugin is not None and _monotonic() >= self._next_refresh:
                self._next_refresh = _monotonic() + REFRESH_BACKOFF
                try:
                    result = await _run_plugin(snap.plugin, self._exec_timeout)
                    if not result.token:
                        raise CredentialsError(
                            f'exec plugin "{snap.plugin.name}" returned no token on refresh'
                        )
                except CredentialsError as e:
                    self._refresh_error = str(e)
                    log.warning("kubeconfig %s: token refresh failed: %s", self.path, e)
                else:
                    self._refresh_error = None
                    header = f"Bearer {result.token}"
                    self._snap = snap = dataclasses.replace(
                        snap, header=header, expires_at=result.expires_at
                    )
                    return header
            if _now() < snap.expires_at:
                return snap.header  # refresh failed or backing off: old token still works
            reason = self._refresh_error or "no refresh possible"
            raise CredentialsError(f"kubeconfig {self.path}: token expired; {reason}")

    async def reload(self) -> None:
        """Re-read the kubeconfig (after a 401); concurrent callers share one reload.

        On failure the old credentials stay in use and CredentialsError is raised.
        """
        task = self._reload_task
        if task is None or task.done():
            task = self._reload_task = asyncio.ensure_future(self._do_reload())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(task)

    async def _do_reload(self) -> None:
        self._snap = await _load(self.path, self._exec_timeout)
        self._next_refresh, self._refresh_error = 0.0, None


async def load_credentials(path: Path, *, exec_timeout: float = 10.0) -> Credentials:
    """Load the kubeconfig's current context; CredentialsError names the file and problem.

    Called once per cluster load, so a warning about the file is logged here, not on the
    reloads a 401 triggers nor per request."""
    snap = await _load(path, exec_timeout)
    if snap.endpoint.ssl.verify_mode == ssl.CERT_NONE:
        log.warning(
            "kubeconfig %s: insecure-skip-tls-verify is set: the API server's certificate "
            "is not checked, so whoever can intercept the connection gets this cluster's "
            "credentials",
            path,
        )
    return Credentials(path, snap, exec_timeout)


# --- loading -------------------------------------------------------------------------------


async def _load(path: Path, exec_timeout: float) -> _Snapshot:
    try:
        try:
            snap = await asyncio.wait_for(asyncio.to_thread(_load_locked, path), LOAD_TIMEOUT)
        except TimeoutError:
            raise CredentialsError(f"loading took longer than {LOAD_TIMEOUT:g}s") from None
        if snap.plugin is None:
            return snap
        result = await _run_plugin(snap.plugin, exec_timeout)
        if result.token:
            header = f"Bearer {result.token}"
            return dataclasses.replace(snap, header=header, expires_at=result.expires_at)
        await asyncio.to_thread(_load_pem_chain, snap.endpoint.ssl, result, snap.plugin.name)
        return snap
    except CredentialsError as e:
        raise CredentialsError(f"kubeconfig {path}: {e}") from None


def _load_locked(path: Path) -> _Snapshot:
    if not _LOAD_LOCK.acquire(timeout=LOAD_TIMEOUT):
        raise CredentialsError("another kubeconfig load is stuck; try again later")
    try:
        return _load_sync(path)
    finally:
        _LOAD_LOCK.release()


def _load_sync(path: Path) -> _Snapshot:
    """Parse, check, and load with the package; returns without the exec plugin's output."""
    doc = _read_yaml(path)
    base = str(path.resolve().parent)
    name, cluster, user_name, user = _select(doc)
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise CredentialsError(f'cluster of context "{name}" has no server')
    proxy = cluster.get("proxy-url")
    for label, url in (("server", server), ("proxy-url", proxy)):
        if url is None:
            continue
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise CredentialsError(f"{label} must be an http:// or https:// URL")
        register(parts.password)
        if label == "server" and (parts.username or parts.password):
            # aiohttp would turn them into a second Authorization (a ValueError per request).
            raise CredentialsError(
                "server URL carries a user name or password (user:password@); "
                "give credentials in the kubeconfig's user instead"
            )
    if not isinstance(cluster.get("insecure-skip-tls-verify", False), bool):
        raise CredentialsError("insecure-skip-tls-verify must be true or false")
    if not isinstance(cluster.get("tls-server-name", ""), str):
        raise CredentialsError("tls-server-name must be a string")

    kind = _auth_kind(user, user_name)
    labels = _check_sources(cluster, user, base, tls=server.startswith("https"))
    if kind == "token-file":
        _check_file("token", _resolve(base, user["tokenFile"]))
    plugin = _plugin(user["exec"], cluster, base) if kind == "exec" else None

    # The package must never run exec plugins itself (no timeout, errors only logged).
    stripped = copy.deepcopy(doc)
    for item in stripped.get("users") or []:
        if isinstance(item, dict) and isinstance(item.get("user"), dict):
            item["user"].pop("exec", None)
    cfg = Configuration()  # private: the package's global default stays untouched
    with _package_temp_dir() as tmp:
        try:
            loader = kube_config.KubeConfigLoader(
                stripped, active_context=name, config_base_path=base, temp_file_path=tmp
            )
            loader.load_and_set(cfg)
        except kube_config.ConfigException as e:
            raise CredentialsError((redact(str(e)).splitlines() or ["invalid"])[0]) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CredentialsError(f"cannot load credentials ({type(e).__name__})") from None
        ctx = _ssl_context(cfg, labels)
    header = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
    if kind in ("token", "token-file", "oidc", "basic"):
        scheme, _, value = (header or "").partition(" ")
        value = value.strip()  # token files end with a newline; client-go trims too
        register(value, pool="rotating" if kind in ("token-file", "oidc") else "static")
        if not value:
            what = {"oidc": "auth-provider oidc id-token is not a valid JWT"}
            raise CredentialsError(what.get(kind, f"{kind} credentials are empty"))
        if not value.isprintable():
            raise CredentialsError(f"{kind} credentials contain control characters")
        header = f"{scheme} {value}"
    else:  # exec: the plugin's output decides; the package may have set Basic meanwhile
        header = None
    endpoint = Endpoint(cfg.host, ctx, cfg.tls_server_name or None, proxy)
    return _Snapshot(endpoint, kind, name, header, None, plugin)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KUBECONFIG_BYTES + 1)
    except OSError as e:
        raise CredentialsError(f"cannot read: {e.strerror}") from None
    if len(raw) > MAX_KUBECONFIG_BYTES:
        raise CredentialsError(f"larger than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:  # str(e) quotes the offending line, which may hold a secret
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CredentialsError(f"not valid YAML: {getattr(e, 'problem', None)}{where}") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"not a kubeconfig: YAML {type(doc).__name__}, not a mapping")
    return doc


def _named(doc: dict[str, Any], section: str, name: str, inner: str) -> dict[str, Any] | None:
    items = doc.get(section)
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(inner)
            if not isinstance(value, dict):
                raise CredentialsError(f'{section[:-1]} "{name}" has no {inner} mapping')
            return value
    return None


def _select(doc: dict[str, Any]) -> tuple[str, dict, str | None, dict]:
    """The current context, its cluster and user; kubeconfig mistakes named precisely."""
    if not doc.get("contexts"):
        raise CredentialsError("no contexts in kubeconfig")
    name = doc.get("current-context")
    if not name or not isinstance(name, str):
        raise CredentialsError("current-context is not set")
    context = _named(doc, "contexts", name, "context")
    if context is None:
        raise CredentialsError(f'context "{name}" not found in kubeconfig')
    cluster_name = context.get("cluster")
    cluster = _named(doc, "clusters", cluster_name, "cluster") if cluster_name else None
    if cluster is None:
        raise CredentialsError(f'context "{name}" names unknown cluster "{cluster_name}"')
    user_name = context.get("user")
    user = _named(doc, "users", user_name, "user") if user_name else {}
    if user is None:
        raise CredentialsError(f'context "{name}" names unknown user "{user_name}"')
    return name, cluster, user_name, user


def _auth_kind(user: dict[str, Any], user_name: str | None) -> str:
    """Same precedence as the package: auth-provider, token/tokenFile, exec, basic."""
    provider = user.get("auth-provider")
    register(user.get("token"), user.get("password"))
    if isinstance(provider, dict):
        pcfg = provider.get("config") if isinstance(provider.get("config"), dict) else {}
        register(pcfg.get("id-token"), pcfg.get("refresh-token"), pcfg.get("client-secret"))
        if provider.get("name") != "oidc":
            raise CredentialsError(
                f'auth-provider "{provider.get("name")}" is not supported; use an exec plugin'
            )
        return "oidc"
    if user.get("token"):
        return "token"
    if user.get("tokenFile"):
        return "token-file"
    if user.get("exec"):
        if not isinstance(user["exec"], dict):
            raise CredentialsError(f'user "{user_name}": exec must be a mapping')
        return "exec"
    if "username" in user and "password" in user:
        return "basic"
    if user.get("client-certificate") or user.get("client-certificate-data"):
        return "client-certificate"
    return "none"


def _resolve(base: str, ref: object) -> str:
    if not isinstance(ref, str) or not ref:
        raise CredentialsError("a file reference in the kubeconfig is not a string")
    return os.path.normpath(os.path.join(base, ref))


def _check_file(label: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CredentialsError(f"{label} file {path}: {e.strerror}") from None


def _check_sources(
    cluster: dict[str, Any], user: dict[str, Any], base: str, *, tls: bool
) -> dict[str, str]:
    """Check CA, client cert and key before the package sees them; returns error labels.

    Mirrors the package's rules: ``*-data`` wins over the file; files resolve against the
    kubeconfig's directory; all three matter only for https servers.
    """
    labels = {}
    for obj, key, label in (
        (cluster, "certificate-authority", "certificate authority"),
        (user, "client-certificate", "client certificate"),
        (user, "client-key", "client key"),
    ):
        data_key = f"{key}-data"
        if data_key in obj:
            value = obj[data_key]
            try:
                raw = base64.b64decode("".join(str(value).split()), validate=True)
            except (binascii.Error, ValueError):
                register(str(value))
                raise CredentialsError(f"{data_key} is not valid base64") from None
            if key == "client-key":
                register(str(value))
                register_pem(raw.decode("utf-8", "replace"))
            labels[key] = data_key
        elif key in obj and tls:
            path = _resolve(base, obj[key])
            content = _check_file(label, path)
            if key == "client-key":
                register_pem(content.decode("utf-8", "replace"))
            labels[key] = f"{label} file {path}"
    if tls and ("client-certificate" in labels) != ("client-key" in labels):
        raise CredentialsError("client certificate and client key must be given together")
    return labels


@contextlib.contextmanager
def _package_temp_dir() -> Iterator[str]:
    """A private 0700 dir for the package's temp files, scrubbed with its cache entries.

    Runs under _LOAD_LOCK, so every cache entry added meanwhile is ours.
    """
    tmp = tempfile.mkdtemp(prefix="fleet-exporter-kc-")
    before = dict(kube_config._temp_files)
    try:
        yield tmp
    finally:
        cache = kube_config._temp_files
        for key, name in list(cache.items()):
            if before.get(key) != name or os.path.dirname(name) == tmp:
                cache.pop(key, None)
                with contextlib.suppress(OSError):
                    os.remove(name)
        if not cache:  # the package registers this again whenever its cache was empty
            atexit.unregister(kube_config._cleanup_temp_files)
        shutil.rmtree(tmp, ignore_errors=True)


def _no_password() -> bytes:
    """Encrypted keys fail instead of OpenSSL prompting on the terminal."""
    return b""


def _ssl_context(cfg: Configuration, labels: dict[str, str]) -> ssl.SSLContext:
    """One in-memory context per cluster; the files it was read from can be deleted."""
    try:
        if cfg.ssl_ca_cert:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        else:
            ctx = ssl.create_default_context()
    except (ssl.SSLError, OSError):
        ca = labels.get("certificate-authority", "certificate authority")
        raise CredentialsError(f"{ca}: no valid PEM certificate") from None
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        label = " and ".join(labels[k] for k in ("client-certificate", "client-key"))
        _load_chain(ctx, cfg.cert_file, cfg.key_file, label)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None, label: str) -> None:
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise CredentialsError(f"{label}: client key does not match the certificate") from None
        problem = "not valid PEM, or the key is encrypted"
        raise CredentialsError(f"{label}: client certificate or key {problem}") from None
    except OSError as e:
        raise CredentialsError(f"{label}: {e.strerror}") from None


def _load_pem_chain(ctx: ssl.SSLContext, result: execplugin.Result, name: str) -> None:
    """Exec plugins may return a client cert instead of a token (not refreshed until reload)."""
    tmp = tempfile.mkdtemp(prefix="fleet-exporter-exec-")
    try:
        paths = []
        for part, pem in (("cert", result.cert_pem), ("key", result.key_pem)):
            fd, p = tempfile.mkstemp(dir=tmp, suffix=f".{part}")
            with os.fdopen(fd, "w") as f:
                f.write(pem or "")
            paths.append(p)
        _load_chain(ctx, paths[0], paths[1], f'exec plugin "{name}"')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- exec credential plugins ---------------------------------------------------------------


def _cluster_info(cluster: dict[str, Any], base: str) -> dict[str, Any]:
    """The ExecCredential ``spec.cluster`` object (camelCase, CA inline as base64)."""
    ca = cluster.get("certificate-authority-data")
    if not ca and cluster.get("certificate-authority"):
        path = _resolve(base, cluster["certificate-authority"])
        ca = base64.b64encode(_check_file("certificate authority", path)).decode()
    info = {
        "server": cluster.get("server"),
        "tlsServerName": cluster.get("tls-server-name"),
        "insecureSkipTLSVerify": cluster.get("insecure-skip-tls-verify"),
        "certificateAuthorityData": ca,
        "proxyURL": cluster.get("proxy-url"),
        "disableCompression": cluster.get("disable-compression"),
    }
    for ext in cluster.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
            info["config"] = ext.get("extension")
    return {k: v for k, v in info.items() if v is not None}


def _plugin(spec: dict[str, Any], cluster: dict[str, Any], base: str) -> execplugin.Plugin:
    """The exec section resolved once per load; the cluster info only when asked for."""
    info = _cluster_info(cluster, base) if spec.get("provideClusterInfo") else None
    try:
        return execplugin.resolve(spec, base, info)
    except execplugin.ExecPluginError as e:
        raise CredentialsError(str(e)) from None


async def _run_plugin(plugin: execplugin.Plugin, exec_timeout: float) -> execplugin.Result:
    try:
        return await execplugin.run(plugin, exec_timeout)
    except execplugin.ExecPluginError as e:
        raise CredentialsError(str(e)) from None
