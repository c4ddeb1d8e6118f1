"""credentials: kubeconfig -> Endpoint + Authorization, against the package's known traps.

Real files, real subprocesses (fake exec plugins written to tmp_path), real TLS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
from kubernetes.client import Configuration
from kubernetes.config import kube_config

from fleet_exporter import credentials
from fleet_exporter import redact as registry
from fleet_exporter.credentials import (
    Credentials,
    CredentialsError,
    check_permissions,
    load_credentials,
)
from fleet_exporter.redact import RedactingFilter, redact

try:  # works whether or not tests/ is a package
    from . import fixtures_credentials as fx
except ImportError:
    import fixtures_credentials as fx

CANARY_PASSWORD = fx.CANARY_PASSWORD
CANARY_TOKEN = fx.CANARY_TOKEN
SERVER_NAME = fx.SERVER_NAME
Plugin = fx.Plugin
b64 = fx.b64
fake_jwt = fx.fake_jwt
key_fragments = fx.key_fragments
pki = fx.pki
process_gone = fx.process_gone
tls_server = fx.tls_server
tree_contains = fx.tree_contains
write_kubeconfig = fx.write_kubeconfig

SERVER = "https://127.0.0.1:6443"


class Clock:
    """Shifts credentials' view of wall and monotonic time; no sleeping through windows."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(credentials, "_now", lambda: time.time() + c.offset)
    monkeypatch.setattr(credentials, "_monotonic", lambda: time.monotonic() + c.offset)
    return c


def ca_cluster(**extra: object) -> dict[str, object]:
    return {"server": SERVER, "certificate-authority-data": b64(pki().ca), **extra}


async def load(path: Path, **kw: float) -> Credentials:
    return await load_credentials(path, **kw)


# --- loading each auth kind --------------------------------------------------------------


async def test_static_token_endpoint_fields_and_global_default_untouched(tmp_path, monkeypatch):
    assert Configuration._default is None
    monkeypatch.setenv("HTTPS_PROXY", "http://10.9.9.9:3128")  # Configuration picks this up
    monkeypatch.setenv("https_proxy", "http://10.9.9.9:3128")
    kc = write_kubeconfig(
        tmp_path / "k.yaml",
        ca_cluster(server=SERVER + "/clusters/x/", **{"tls-server-name": SERVER_NAME}),
        {"token": CANARY_TOKEN},
    )
    before = (kc.read_bytes(), kc.stat().st_mtime_ns)
    creds = await load(kc)
    assert creds.auth_kind == "token"
    assert creds.endpoint.server == SERVER + "/clusters/x"
    assert creds.endpoint.server_hostname == SERVER_NAME
    assert creds.endpoint.proxy is None  # HTTPS_PROXY ignored: only proxy-url counts
    assert creds.endpoint.ssl.check_hostname
    assert await creds.authorization() == f"Bearer {CANARY_TOKEN}"
    await creds.reload()
    assert Configuration._default is None
    assert (kc.read_bytes(), kc.stat().st_mtime_ns) == before  # never written back


async def test_proxy_url_from_kubeconfig(tmp_path):
    kc = write_kubeconfig(
        tmp_path / "k.yaml", ca_cluster(**{"proxy-url": "http://proxy.local:3128"}), None
    )
    creds = await load(kc)
    assert creds.endpoint.proxy == "http://proxy.local:3128"
    assert creds.auth_kind == "none"
    assert await creds.authorization() is None


async def test_fast_path_never_suspends(tmp_path):
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"token": CANARY_TOKEN})
    creds = await load(kc)
    coro = creds.authorization()
    with pytest.raises(StopIteration) as done:  # completes on the first step: no await
        coro.send(None)
    assert done.value.value == f"Bearer {CANARY_TOKEN}"


async def test_token_file_relative_and_reread_on_reload(tmp_path):
    (tmp_path / "secrets").mkdir()
    token_file = tmp_path / "secrets" / "token"
    token_file.write_text("first-token-abcdef\n")
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"tokenFile": "secrets/token"})
    creds = await load(kc)
    assert creds.auth_kind == "token-file"
    assert await creds.authorization() == "Bearer first-token-abcdef"
    token_file.write_text("second-token-123456")
    assert await creds.authorization() == "Bearer first-token-abcdef"  # until a reload
    await creds.reload()
    assert await creds.authorization() == "Bearer second-token-123456"
    assert redact("x first-token-abcdef second-token-123456") == "x <redacted> <redacted>"


async def test_basic_auth_registers_password(tmp_path):
    kc = write_kubeconfig(
        tmp_path / "k.yaml", ca_cluster(), {"username": "admin", "password": CANARY_PASSWORD}
    )
    creds = await load(kc)
    expected = base64.b64encode(f"admin:{CANARY_PASSWORD}".encode()).decode()
    assert creds.auth_kind == "basic"
    assert await creds.authorization() == f"Basic {expected}"
    assert redact(f"p={CANARY_PASSWORD} h={expected}") == "p=<redacted> h=<redacted>"


async def test_oidc_id_token_and_reload_picks_up_new_one(tmp_path):
    first, second = fake_jwt(3600, "sigAAAAfirst"), fake_jwt(3600, "sigBBBBsecond")

    def write(token: str) -> Path:
        provider = {"name": "oidc", "config": {"id-token": token, "client-id": "fleet"}}
        return write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"auth-provider": provider})

    creds = await load(write(first))
    assert creds.auth_kind == "oidc"
    assert await creds.authorization() == f"Bearer {first}"
    write(second)
    await creds.reload()
    assert await creds.authorization() == f"Bearer {second}"
    assert first not in redact(f"leak {first}")


async def test_relative_file_paths_resolve_against_kubeconfig_dir(tmp_path):
    p = pki()
    d = tmp_path / "conf"
    d.mkdir()
    for name, text in (("ca.crt", p.ca), ("c.crt", p.client_cert), ("c.key", p.client_key)):
        (d / name).write_text(text)
    cluster = {"server": SERVER, "certificate-authority": "ca.crt"}
    user = {"client-certificate": "c.crt", "client-key": "./c.key"}
    creds = await load(write_kubeconfig(d / "k.yaml", cluster, user))  # cwd is elsewhere
    assert creds.auth_kind == "client-certificate"
    assert await creds.authorization() is None
    assert redact(p.client_key) != p.client_key  # file key material is registered too


# --- temp files and the package's global cache ---------------------------------------------


async def test_inline_key_material_never_left_on_disk(tmp_path, monkeypatch):
    p = pki()
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    made: list[tuple[str, int]] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy_mkdtemp(*a, **kw):
        d = real_mkdtemp(*a, **kw)
        made.append((d, os.stat(d).st_mode & 0o777))
        return d

    written: list[tuple[str, str | None]] = []
    real_create = kube_config._create_temp_file_with_content

    def spy_create(content, temp_file_path=None, force_recreate=False):
        name = real_create(content, temp_file_path, force_recreate)
        written.append((name, temp_file_path))
        return name

    monkeypatch.setattr(tempfile, "mkdtemp", spy_mkdtemp)
    monkeypatch.setattr(kube_config, "_create_temp_file_with_content", spy_create)
    user = {"client-certificate-data": b64(p.client_cert), "client-key-data": b64(p.client_key)}
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), user)
    await load(kc)
    await load(kc)

    assert made and all(mode == 0o700 for _d, mode in made)
    assert len(written) == 6  # CA, cert, key per load: the package really used our dirs
    assert all(Path(name).parent == Path(d) for name, d in written)
    assert all(str(Path(d).parent) == str(tmp_root) for _n, d in written)
    assert not any(Path(name).exists() for name, _d in written)
    assert list(tmp_root.iterdir()) == []
    needles = [p.client_key.encode(), *(f.encode() for f in key_fragments(p.client_key))]
    assert tree_contains(tmp_root, needles) == []
    assert kube_config._temp_files == {}


async def test_concurrent_loads_with_shared_inline_data_all_succeed(tmp_path, monkeypatch):
    hooks: list[object] = []  # the package re-registers its exit hook whenever its cache empties
    monkeypatch.setattr(atexit, "register", hooks.append)

    def unregister(func: object) -> None:
        hooks[:] = [h for h in hooks if h != func]

    monkeypatch.setattr(atexit, "unregister", unregister)
    p = pki()
    user = {"client-certificate-data": b64(p.client_cert), "client-key-data": b64(p.client_key)}
    paths = [write_kubeconfig(tmp_path / f"k{i}.yaml", ca_cluster(), user) for i in range(24)]
    results = await asyncio.gather(*(load(path) for path in paths), return_exceptions=True)
    assert [r for r in results if not isinstance(r, Credentials)] == []
    assert kube_config._temp_files == {}
    assert hooks == []  # registered once per load, unregistered once the cache is clean


# --- broken kubeconfigs ------------------------------------------------------------------


def _ctx(cluster="c", user="u"):
    return [{"name": "ctx", "context": {"cluster": cluster, "user": user}}]


BROKEN = {
    "not yaml": ("raw", f"users: [{{token: {CANARY_TOKEN}: x\n", "not valid YAML"),
    "yaml list": ("raw", f"- {CANARY_TOKEN}\n- b\n", "not a mapping"),
    "no contexts": ("top", {"contexts": []}, "no contexts"),
    "no current-context": ("top", {"current-context": None}, "current-context is not set"),
    "unknown current-context": ("top", {"current-context": "nope"}, 'context "nope" not found'),
    "unknown cluster": ("top", {"contexts": _ctx(cluster="c2")}, 'unknown cluster "c2"'),
    "unknown user": ("top", {"contexts": _ctx(user="u2")}, 'unknown user "u2"'),
    "no server": ("cluster", {"server": None}, "has no server"),
    "server not a URL": ("cluster", {"server": "127.0.0.1:6443"}, "server must be an http"),
    "socks proxy": ("cluster", {"proxy-url": "socks5://p:1080"}, "proxy-url must be an http"),
    "password in server URL": (
        "cluster", {"server": f"https://admin:{CANARY_PASSWORD}@127.0.0.1:6443"},
        "server URL carries a user name or password (user:password@)",
    ),
    "token as user in server URL": (
        "cluster", {"server": f"https://{CANARY_TOKEN}@127.0.0.1:6443/"},
        "server URL carries a user name or password",
    ),
    "insecure as string": (
        "cluster", {"insecure-skip-tls-verify": "false"}, "insecure-skip-tls-verify must be"
    ),
    "missing CA file": (
        "cluster", {"certificate-authority-data": None, "certificate-authority": "missing.crt"},
        "missing.crt: No such file or directory",
    ),
    "CA path is a directory": (
        "cluster", {"certificate-authority-data": None, "certificate-authority": "."},
        "Is a directory",
    ),
    "CA data not base64": (
        "cluster", {"certificate-authority-data": "not*base64!"},
        "certificate-authority-data is not valid base64",
    ),
    "CA data not PEM": (
        "cluster", {"certificate-authority-data": b64("hello, not a certificate")},
        "certificate-authority-data: no valid PEM certificate",
    ),
    "cert without key": (
        "user", {"client-certificate-data": b64(pki().client_cert)}, "given together"
    ),
    "key does not match cert": (
        "user",
        {"client-certificate-data": b64(pki().client_cert),
         "client-key-data": b64(pki().other_key)},
        "client-certificate-data and client-key-data: client key does not match the",
    ),
    "encrypted key (no prompt)": (
        "user",
        {"client-certificate-data": b64(pki().client_cert),
         "client-key-data": b64(pki().encrypted_client_key)},
        "not valid PEM, or the key is encrypted",
    ),
    "missing token file": ("user", {"tokenFile": "nope/token"}, "token file /"),
    "unsupported auth-provider": (
        "user", {"auth-provider": {"name": "gcp", "config": {"access-token": CANARY_TOKEN}}},
        'auth-provider "gcp" is not supported',
    ),
    "oidc token not a JWT": (
        "user", {"auth-provider": {"name": "oidc", "config": {"id-token": CANARY_TOKEN}}},
        "not a valid JWT",
    ),
    "exec command not found": (
        "user",
        {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "no-such-plugin-x",
                  "installHint": "install it from example.org"}},
        'exec plugin "no-such-plugin-x": command not found (install it from example.org)',
    ),
    "exec bad apiVersion": (
        "user", {"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}},
        "apiVersion must be one of",
    ),
    "exec interactive": (
        "user",
        {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x",
                  "interactiveMode": "Always"}},
        "needs a terminal",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
async def test_broken_kubeconfig(case, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    kind, value, expected = BROKEN[case]
    p = pki()
    path = tmp_path / "broken.yaml"
    # Every variant carries canary secrets in the selected user, to prove none leak.
    user = {
        "token": CANARY_TOKEN,
        "client-certificate-data": b64(p.client_cert),
        "client-key-data": b64(p.client_key),
    }
    user = user if kind != "user" else dict(value)
    user.setdefault("password", CANARY_PASSWORD)
    if kind == "raw":
        path.write_text(value)
    elif kind == "top":
        write_kubeconfig(path, ca_cluster(), user, **value)
    elif kind == "cluster":
        cluster = {k: v for k, v in {**ca_cluster(), **value}.items() if v is not None}
        write_kubeconfig(path, cluster, user)
    else:
        write_kubeconfig(path, ca_cluster(), user)
    with pytest.raises(CredentialsError) as err:
        await load(path)
    message = str(err.value)
    assert str(path) in message and expected in message
    assert "\n" not in message
    keys = (p.client_key, p.other_key, p.encrypted_client_key)
    for secret in (CANARY_TOKEN, CANARY_PASSWORD, *(f for k in keys for f in key_fragments(k))):
        assert secret not in message
        assert secret not in caplog.text
    assert err.value.__suppress_context__ or err.value.__context__ is None


# --- exec plugins -------------------------------------------------------------------------


async def test_exec_v1_env_args_cluster_info_and_relative_command(tmp_path):
    plugin = Plugin(tmp_path, info=str(tmp_path / "info.json"), env_keys=["FLEET_X"], ttl=3600)
    cluster = ca_cluster(
        **{"tls-server-name": SERVER_NAME},
        extensions=[{"name": "client.authentication.k8s.io/exec", "extension": {"region": "x"}}],
    )
    exec_section = plugin.exec_section(
        command="./fake-plugin",  # relative to the kubeconfig's directory, not the cwd
        args=["get-token", "--cluster", "c"],
        env=[{"name": "FLEET_X", "value": "42"}],
        provideClusterInfo=True,
    )
    creds = await load(write_kubeconfig(tmp_path / "k.yaml", cluster, {"exec": exec_section}))
    assert creds.auth_kind == "exec"
    assert await creds.authorization() == "Bearer exec-token-1"
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["argv"] == ["get-token", "--cluster", "c"]
    assert info["env"] == {"FLEET_X": "42"}
    assert info["cwd"] == str(tmp_path)
    spec = info["exec_info"]
    assert spec["apiVersion"] == "client.authentication.k8s.io/v1"
    assert spec["kind"] == "ExecCredential" and spec["spec"]["interactive"] is False
    assert spec["spec"]["cluster"] == {
        "server": SERVER,
        "tlsServerName": SERVER_NAME,
        "certificateAuthorityData": b64(pki().ca),
        "config": {"region": "x"},
    }
    assert redact("exec-token-1") == "<redacted>"


async def test_exec_v1beta1_without_cluster_info(tmp_path):
    api = "client.authentication.k8s.io/v1beta1"
    plugin = Plugin(tmp_path, api=api, info=str(tmp_path / "info.json"))
    creds = await load(
        write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    )
    assert await creds.authorization() == "Bearer exec-token-1"
    spec = json.loads((tmp_path / "info.json").read_text())["exec_info"]
    assert spec["apiVersion"] == api and "cluster" not in spec["spec"]


EXEC_FAILURES = {
    "non-zero exit": ({"mode": "fail"}, "exited with status 3: boom: credentials unavailable"),
    "garbage": ({"mode": "garbage"}, "printed invalid JSON"),
    "no token": ({"mode": "notoken"}, "neither token nor client certificate"),
    "token with newline": ({"token": "abc-secret\nX-Evil: 1"}, "token containing control"),
    "wrong apiVersion": (
        {"reply_api": "client.authentication.k8s.io/v1beta1"}, "apiVersion other than"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXEC_FAILURES))
async def test_exec_plugin_failures_are_errors(case, tmp_path, caplog):
    conf, expected = EXEC_FAILURES[case]
    plugin = Plugin(tmp_path, **conf)
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    with pytest.raises(CredentialsError) as err:
        await load(kc)
    assert str(kc) in str(err.value) and f'exec plugin "{plugin.path}"' in str(err.value)
    assert expected in str(err.value)
    assert plugin.runs == 1
    for leaked in ("exec-token", "abc-secret"):  # plugin stdout is never echoed
        assert leaked not in str(err.value)
        assert leaked not in caplog.text


async def test_exec_ttl_one_hour_runs_once(tmp_path):
    plugin = Plugin(tmp_path, ttl=3600)
    creds = await load(
        write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    )
    headers = await asyncio.gather(*(creds.authorization() for _ in range(50)))
    assert set(headers) == {"Bearer exec-token-1"} and plugin.runs == 1


async def test_exec_short_ttl_single_flight(tmp_path, clock):
    plugin = Plugin(tmp_path, ttl=60)  # inside the 5-minute skew from the start
    creds = await load(
        write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    )
    assert plugin.runs == 1
    headers = await asyncio.gather(*(creds.authorization() for _ in range(10)))
    assert plugin.runs == 2 and set(headers) == {"Bearer exec-token-2"}
    assert await creds.authorization() == "Bearer exec-token-2"  # backoff: no run
    assert plugin.runs == 2
    clock.advance(credentials.REFRESH_BACKOFF + 1)
    assert await creds.authorization() == "Bearer exec-token-3"


async def test_exec_failing_refresh_backs_off_then_expires(tmp_path, clock, caplog):
    plugin = Plugin(tmp_path, ttl=60, prefix="rotating-secret")
    creds = await load(
        write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    )
    # The plugin now fails and prints the token it issued before: stderr must be redacted.
    plugin.set(mode="fail", stderr="denied; old token rotating-secret-1")
    for _ in range(5):
        assert await creds.authorization() == "Bearer rotating-secret-1"  # still valid
    assert plugin.runs == 2  # load + one attempt in this backoff window
    clock.advance(credentials.REFRESH_BACKOFF + 1)
    await asyncio.gather(*(creds.authorization() for _ in range(5)))
    assert plugin.runs == 3
    clock.advance(120)  # past the real expiry
    with pytest.raises(CredentialsError) as err:
        await creds.authorization()
    assert plugin.runs == 4
    message = str(err.value)
    assert "token expired" in message and "exited with status 3" in message
    assert "old token <redacted>" in message and "rotating-secret-1" not in message
    with pytest.raises(CredentialsError):
        await creds.authorization()
    assert plugin.runs == 4  # still backing off
    assert "rotating-secret-1" not in caplog.text
    plugin.set(mode="ok")
    clock.advance(credentials.REFRESH_BACKOFF + 1)
    assert await creds.authorization() == "Bearer rotating-secret-5"


async def test_exec_hung_plugin_killed_after_timeout(tmp_path):
    pids = tmp_path / "pids"
    plugin = Plugin(tmp_path, mode="hang", pids=str(pids))
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    started = time.monotonic()
    with pytest.raises(CredentialsError, match=r"timed out after 0\.5s"):
        await load(kc, exec_timeout=0.5)
    assert time.monotonic() - started < 3.5
    plugin_pid, child_pid = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (process_gone(plugin_pid) and process_gone(child_pid)):
        assert time.monotonic() < deadline, "plugin or its child still running"
        await asyncio.sleep(0.02)


async def test_exec_hung_refresh_times_out(tmp_path, clock):
    plugin = Plugin(tmp_path, ttl=60, pids=str(tmp_path / "pids"))
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    creds = await load(kc, exec_timeout=0.5)
    plugin.set(mode="hang")
    clock.advance(120)
    with pytest.raises(CredentialsError, match=r"timed out after 0\.5s"):
        await creds.authorization()


async def wait_gone(*pids: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while alive := [p for p in pids if not process_gone(p)]:
        assert time.monotonic() < deadline, f"still running: {alive}"
        await asyncio.sleep(0.02)


async def test_exec_descendants_that_left_the_group_are_killed(tmp_path):
    pids = tmp_path / "pids"
    plugin = Plugin(tmp_path, mode="escape", pids=str(pids))
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    try:
        with pytest.raises(CredentialsError, match=r"timed out after 1s"):
            await load(kc, exec_timeout=1)
    finally:
        # The plugin, a setsid child and a double-forked daemon (neither in its group).
        await wait_gone(*map(int, pids.read_text().split()))


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_exec_output_is_capped(tmp_path, stream):
    import tracemalloc

    plugin = Plugin(tmp_path, mode="flood", stream=stream)
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(CredentialsError) as err:
            await load(kc, exec_timeout=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held while reading the plugin"
    assert time.monotonic() - started < 10  # stopped at the cap, not at the timeout
    assert f"wrote more than 1024 KiB to {stream}" in str(err.value)
    assert "killed" in str(err.value) and str(kc) in str(err.value)


async def test_exec_cap_kills_the_whole_tree(tmp_path):
    pids = tmp_path / "pids"
    plugin = Plugin(tmp_path, mode="escape", then="flood", pids=str(pids))
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    with pytest.raises(CredentialsError, match="wrote more than 1024 KiB to stdout"):
        await load(kc, exec_timeout=20)
    await wait_gone(*map(int, pids.read_text().split()))


async def test_exec_env_args_and_stderr_secrets_never_come_out(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    env_secret, arg_secret, own_secret = "env-canary-9d1f37", "arg-canary-0be6c4", "own-c4n4ry-77e1"
    plugin = Plugin(tmp_path, mode="tell", env_keys=["API_SECRET", "REGION"], stderr=(
        f"fetching failed: api_key={own_secret}; giving up"
    ))  # fmt: skip
    section = plugin.exec_section(
        env=[{"name": "API_SECRET", "value": env_secret}, {"name": "REGION", "value": "eu1"}],
        args=["get-token", "--cluster", "prod-eu", f"--client-secret={arg_secret}"],
    )
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": section})
    with pytest.raises(CredentialsError) as err:
        await load(kc)
    message = str(err.value)
    assert "exited with status 1" in message
    assert "API_SECRET=<redacted>" in message and "api_key=<redacted>; giving up" in message
    # Ordinary values stay readable: short env values, arguments not named like secrets.
    assert "REGION=eu1" in message and "get-token --cluster prod-eu" in message
    for secret in (env_secret, arg_secret, own_secret):
        assert secret not in message and secret not in caplog.text
    assert redact(f"x {env_secret} {arg_secret}") == "x <redacted> <redacted>"


async def test_exec_plugin_does_not_block_event_loop(tmp_path):
    plugin = Plugin(tmp_path, mode="slow", sleep=0.5, ttl=3600)
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await load(kc)
    finally:
        task.cancel()
    assert ticks >= 20  # ~50 possible in 0.5 s; a blocked loop gets none


async def test_reload_single_flight_and_failure_keeps_old(tmp_path):
    plugin = Plugin(tmp_path, ttl=3600)
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"exec": plugin.exec_section()})
    creds = await load(kc)
    await asyncio.gather(*(creds.reload() for _ in range(10)))
    assert plugin.runs == 2
    assert await creds.authorization() == "Bearer exec-token-2"
    old_endpoint = creds.endpoint
    kc.write_text("contexts: [\n")
    with pytest.raises(CredentialsError, match="not valid YAML") as err:
        await creds.reload()
    assert str(kc) in str(err.value)
    assert creds.endpoint is old_endpoint
    assert await creds.authorization() == "Bearer exec-token-2"


# --- real TLS -----------------------------------------------------------------------------


async def _get(creds: Credentials, url: str, *, hostname: bool = True) -> dict:
    ep = creds.endpoint
    auth = await creds.authorization()
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url + "/version",
            ssl=ep.ssl,
            server_hostname=ep.server_hostname if hostname else None,
            headers={"Authorization": auth} if auth else None,
        ) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


async def test_tls_server_name_required_and_used(tmp_path):
    async with tls_server(tmp_path) as url:
        cluster = ca_cluster(server=url, **{"tls-server-name": SERVER_NAME})
        creds = await load(write_kubeconfig(tmp_path / "k.yaml", cluster, {"token": "t-123456"}))
        assert await _get(creds, url) == {"client_cn": None, "auth": True}
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(creds, url, hostname=False)


async def test_tls_without_trusted_ca_fails(tmp_path):
    async with tls_server(tmp_path) as url:
        cluster = {"server": url, "tls-server-name": SERVER_NAME}  # system CAs only
        creds = await load(write_kubeconfig(tmp_path / "k.yaml", cluster))
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(creds, url)


async def test_tls_insecure_skip_verify_works_and_warns_once_per_load(tmp_path, caplog):
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "insecure-skip-tls-verify" in r.msg]

    async with tls_server(tmp_path) as url:
        cluster = {"server": url, "insecure-skip-tls-verify": True}
        kc = write_kubeconfig(tmp_path / "k.yaml", cluster)
        creds = await load(kc)
        assert warnings() == [
            f"kubeconfig {kc}: insecure-skip-tls-verify is set: the API server's certificate "
            "is not checked, so whoever can intercept the connection gets this cluster's "
            "credentials"
        ]
        for _ in range(3):
            assert await _get(creds, url) == {"client_cn": None, "auth": False}
        await creds.reload()  # what a 401 does: not a new cluster load
        assert len(warnings()) == 1
        await load(kc)  # a reload of the fleet's configuration is
        assert len(warnings()) == 2
    await load(write_kubeconfig(tmp_path / "safe.yaml", ca_cluster()))
    assert len(warnings()) == 2


async def test_mtls_client_certificate(tmp_path):
    p = pki()
    async with tls_server(tmp_path, require_client_cert=True) as url:
        cluster = ca_cluster(server=url, **{"tls-server-name": SERVER_NAME})
        user = {"client-certificate-data": b64(p.client_cert), "client-key-data": b64(p.client_key)}
        creds = await load(write_kubeconfig(tmp_path / "k.yaml", cluster, user))
        assert await _get(creds, url) == {"client_cn": "admin", "auth": False}
        anonymous = await load(write_kubeconfig(tmp_path / "anon.yaml", cluster))
        with pytest.raises(aiohttp.ClientError):
            await _get(anonymous, url)


async def test_mtls_with_exec_plugin_certificate(tmp_path):
    p = pki()
    plugin = Plugin(tmp_path, mode="cert", cert=p.client_cert, key=p.client_key)
    async with tls_server(tmp_path, require_client_cert=True) as url:
        cluster = ca_cluster(server=url, **{"tls-server-name": SERVER_NAME})
        user = {"exec": plugin.exec_section()}
        creds = await load(write_kubeconfig(tmp_path / "k.yaml", cluster, user))
        assert await creds.authorization() is None
        assert await _get(creds, url) == {"client_cn": "admin", "auth": False}


# --- redaction and permissions -----------------------------------------------------------


async def test_redacting_filter_on_handler(tmp_path):
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"token": CANARY_TOKEN})
    await load(kc)
    records: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = ListHandler()
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        child = logging.getLogger("fleet_exporter.some.child")  # propagates to root handlers
        child.warning("sending %s to %s", f"Bearer {CANARY_TOKEN}", "server")
        try:
            raise RuntimeError(f"bad token {CANARY_TOKEN}")
        except RuntimeError:
            child.exception("failed")
    finally:
        root.removeHandler(handler)
    text = "\n".join(records)
    assert "sending Bearer <redacted> to server" in text
    assert "RuntimeError: bad token <redacted>" in text
    assert CANARY_TOKEN not in text


def test_redact_leaves_plain_text():
    assert redact("") == ""
    assert redact("nothing secret here") == "nothing secret here"


def test_check_permissions(tmp_path):
    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), mode=0o600)
    assert check_permissions(kc) is None
    kc.chmod(0o644)
    warning = check_permissions(kc)
    assert warning and str(kc) in warning and "0644" in warning
    assert check_permissions(tmp_path / "missing") is None
    # A Kubernetes Secret mounted for a non-root pod: 0440, group = the pod's own fsGroup.
    kc.chmod(0o440)
    os.chown(kc, -1, os.getegid())
    assert check_permissions(kc) is None
    if os.geteuid() == 0:  # only root can hand the file to a group we are not in
        foreign = max({os.getegid(), *os.getgroups()}) + 4242
        os.chown(kc, -1, foreign)
        assert "readable by others" in check_permissions(kc)


def test_registry_longest_match_and_bounded_rotation(monkeypatch):
    monkeypatch.setattr(registry, "_pools", {"static": {}, "rotating": {}})
    monkeypatch.setattr(registry, "_index", {})
    monkeypatch.setitem(registry._LIMITS, "rotating", 3)
    registry.register("abcd-static", "abcd-static-and-longer")
    assert redact("x abcd-static-and-longer y abcd-static z") == "x <redacted> y <redacted> z"
    registry.register("abcd-rot-1", "abcd-rot-2", "abcd-rot-3", "abcd-rot-4", pool="rotating")
    assert redact("abcd-rot-1 abcd-rot-4") == "abcd-rot-1 <redacted>"  # oldest rotated out
    assert redact("abcd-static") == "<redacted>"  # static secrets never rotate out
    registry.register("abc")  # too short to remember: would redact ordinary words
    assert redact("abc abcd") == "abc abcd"


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
async def test_tracebacks_are_redacted_in_both_log_formats(tmp_path, fmt, capsys):
    """The formatters write the traceback the redactor saw, not one formatted afresh from
    ``exc_info`` (which once printed the token in clear in every logfmt line)."""
    from fleet_exporter.logs import setup_logging

    kc = write_kubeconfig(tmp_path / "k.yaml", ca_cluster(), {"token": CANARY_TOKEN})
    await load(kc)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", fmt)
        try:
            raise ValueError(f"Bearer {CANARY_TOKEN}")
        except ValueError:
            logging.getLogger("fleet_exporter.test").exception("refresh failed unexpectedly")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "ValueError: Bearer <redacted>" in err
    assert "Traceback" in err
    assert CANARY_TOKEN not in err
