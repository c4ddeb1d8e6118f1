"""Helpers for test_credentials: a throwaway PKI, kubeconfig writer, fake exec plugins, TLS server.

Everything is generated at test time; no key or kubeconfig is ever committed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "kubernetes.default.svc"
CANARY_TOKEN = "canary-token-7f3a9c2e0d"
CANARY_PASSWORD = "canary-password-51b0e4"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> str:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
    ).decode()


def _cert(subject: str, key, issuer_key, issuer: x509.Name | None, *, ca=False, san=None, eku=None):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str  # only DNS:kubernetes.default.svc, no IP SAN
    server_key: str
    client_cert: str
    client_key: str
    other_key: str  # does not match client_cert
    encrypted_client_key: str


@functools.cache
def pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, ca_key, None, ca=True)
    ca_name = x509.load_pem_x509_certificate(ca.encode()).subject
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        "apiserver", server_key, ca_key, ca_name,
        san=[x509.DNSName(SERVER_NAME)], eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    )  # fmt: skip
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("admin", client_key, ca_key, ca_name, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return Pki(
        ca=ca,
        server_cert=server,
        server_key=_key_pem(server_key),
        client_cert=client,
        client_key=_key_pem(client_key),
        other_key=_key_pem(ec.generate_private_key(ec.SECP256R1())),
        encrypted_client_key=_key_pem(client_key, b"secret-passphrase"),
    )


def key_fragments(pem: str) -> list[str]:
    """Pieces of a key that must never show up anywhere: PEM body lines and the base64."""
    lines = [ln for ln in pem.splitlines() if ln and "-----" not in ln and len(ln) >= 16]
    return [*lines, b64(pem)[:40]]


def write_kubeconfig(
    path: Path,
    cluster: dict[str, Any],
    user: dict[str, Any] | None = None,
    *,
    mode: int = 0o600,
    **top: Any,
) -> Path:
    """A one-context kubeconfig (context "ctx", cluster "c", user "u"); ``top`` overrides keys."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "ctx",
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user or {}}],
    }
    doc.update(top)
    path.write_text(yaml.safe_dump(doc))
    path.chmod(mode)
    return path


PLUGIN_SOURCE = r"""
import datetime, json, os, pathlib, subprocess, sys, time

conf = json.loads(pathlib.Path(__file__).with_suffix(".json").read_text())
with open(conf["counter"], "a") as f:
    f.write(f"{os.getpid()}\n")
run = len(pathlib.Path(conf["counter"]).read_text().split())
if conf.get("info"):
    pathlib.Path(conf["info"]).write_text(json.dumps({
        "exec_info": json.loads(os.environ.get("KUBERNETES_EXEC_INFO", "null")),
        "argv": sys.argv[1:],
        "env": {k: os.environ.get(k) for k in conf.get("env_keys", [])},
        "cwd": os.getcwd(),
    }))
mode = conf["mode"]
api = conf.get("api", "client.authentication.k8s.io/v1")
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pathlib.Path(conf["pids"]).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(60)
if mode == "escape":
    # One descendant in a session of its own, one daemon (fork, setsid, fork, stdio to
    # /dev/null): neither is in the plugin's process group any more.
    loner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.write(w, str(os.getpid()).encode())
            time.sleep(60)
        os._exit(0)
    os.close(w)
    daemon = int(os.read(r, 32))
    pathlib.Path(conf["pids"]).write_text(f"{os.getpid()} {loner.pid} {daemon}")
    if conf.get("then") == "flood":
        while True:
            sys.stdout.write("y" * 65536)
    time.sleep(60)
if mode == "flood":
    stream = sys.stderr if conf.get("stream") == "stderr" else sys.stdout
    while True:
        stream.write("y" * 65536)
if mode == "tell":
    # A plugin that fails and prints what it was given: env values, argv, and a secret
    # of its own in NAME=value form.
    for k in conf.get("env_keys", []):
        sys.stderr.write(f"{k}={os.environ.get(k)}\n")
    sys.stderr.write(" ".join(sys.argv[1:]) + "\n")
    sys.stderr.write(conf.get("stderr", "") + "\n")
    sys.exit(1)
if mode == "slow":
    time.sleep(conf["sleep"])
if mode == "fail":
    sys.stderr.write(conf.get("stderr", "boom: credentials unavailable"))
    sys.exit(3)
if mode == "garbage":
    print("this is not an ExecCredential {")
    sys.exit(0)
status = {}
if mode == "cert":
    status = {"clientCertificateData": conf["cert"], "clientKeyData": conf["key"]}
elif mode != "notoken":
    status = {"token": conf.get("token") or f"{conf.get('prefix', 'exec-token')}-{run}"}
    if conf.get("ttl") is not None:
        exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=conf["ttl"])
        status["expirationTimestamp"] = exp.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({"apiVersion": conf.get("reply_api", api), "kind": "ExecCredential",
                  "status": status}))
"""


class Plugin:
    """A fake exec plugin (a Python script) whose behaviour a JSON file beside it controls."""

    def __init__(self, directory: Path, name: str = "fake-plugin", **conf: Any) -> None:
        self.path = directory / name
        self.path.write_text(f"#!{sys.executable}\n{PLUGIN_SOURCE}")
        self.path.chmod(0o755)
        self.counter = directory / f"{name}.count"
        self.counter.touch()
        self.conf: dict[str, Any] = {"counter": str(self.counter), "mode": "ok", **conf}
        self.set()

    def set(self, **changes: Any) -> None:
        self.conf.update(changes)
        self.path.with_suffix(".json").write_text(json.dumps(self.conf))

    @property
    def runs(self) -> int:
        return len(self.counter.read_text().split())

    def exec_section(self, **extra: Any) -> dict[str, Any]:
        api = self.conf.get("api", "client.authentication.k8s.io/v1")
        return {"apiVersion": api, "command": str(self.path), **extra}


def server_ssl(tmp_path: Path, *, require_client_cert: bool) -> ssl.SSLContext:
    p = pki()
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text(p.server_cert)
    key.write_text(p.server_key)
    key.chmod(0o600)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=p.ca)
    return ctx


@contextlib.asynccontextmanager
async def tls_server(tmp_path: Path, *, require_client_cert: bool = False) -> AsyncIterator[str]:
    """A tiny HTTPS API server on 127.0.0.1; answers /version with the client cert's CN."""

    async def version(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
        return web.json_response({"client_cn": cn, "auth": "Authorization" in request.headers})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(
        runner,
        "127.0.0.1",
        0,
        ssl_context=server_ssl(tmp_path, require_client_cert=require_client_cert),
    )
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def process_gone(pid: int) -> bool:
    """True once pid no longer runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def fake_jwt(exp_offset: float, marker: str) -> str:
    import time

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    payload = {"sub": "alice", "exp": int(time.time() + exp_offset), "m": marker}
    return f"{part({'alg': 'RS256'})}.{part(payload)}.{marker}"


def tree_contains(root: Path, needles: list[bytes]) -> list[str]:
    """Files under root whose bytes contain any needle."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                hits.append(str(p))
    return hits
