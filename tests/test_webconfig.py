"""The exporter-toolkit web config: real sockets, real TLS, bcrypt at cost 4.

A tiny aiohttp app ("ok" everywhere) behind ``WebConfig.middleware`` and its SSL context,
so these tests do not depend on the rest of the exporter. Certificates come from the
simulator's in-memory CA and are written to ``tmp_path`` only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_exporter.web import webconfig
from fleet_exporter.web.webconfig import RateLimit, TokenBucket, WebConfig, WebConfigError
from simulator.tls import CertificateAuthority, KeyPair, client_context

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "rotated-password-93be"
WRONG = "wrong-password-1d2c"
ROUTES = ("/", "/metrics", "/probe", "/healthz", "/-/healthy", "/-/ready")


def hash_pw(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def client_with_sans(ca: CertificateAuthority, cn: str, sans: list[x509.GeneralName]) -> KeyPair:
    # The simulator's issue_client takes no SANs; its builder does.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return ca._issue(subject, ExtendedKeyUsageOID.CLIENT_AUTH, sans)


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: KeyPair
    server2: KeyPair  # same CA, another key: for rotation
    client: KeyPair  # SANs: DNS scraper.example, URI spiffe://fleet/prometheus
    intruder: KeyPair  # same CA, SAN DNS intruder.example
    other_ca: CertificateAuthority
    other_client: KeyPair  # from other_ca


@functools.cache
def pki() -> Pki:
    ca, other = CertificateAuthority("web test CA"), CertificateAuthority("other CA")
    return Pki(
        ca=ca,
        server=ca.issue_server(),
        server2=ca.issue_server(),
        client=client_with_sans(
            ca,
            "prometheus",
            [
                x509.DNSName("scraper.example"),
                x509.UniformResourceIdentifier("spiffe://fleet/prometheus"),
            ],
        ),
        intruder=client_with_sans(ca, "intruder", [x509.DNSName("intruder.example")]),
        other_ca=other,
        other_client=client_with_sans(other, "other", [x509.DNSName("scraper.example")]),
    )


def write_pair(directory: Path, pair: KeyPair, name: str = "server") -> None:
    (directory / f"{name}.crt").write_text(pair.cert_pem)
    key = directory / f"{name}.key"
    key.touch(mode=0o600)
    key.write_text(pair.key_pem)


def write_config(directory: Path, doc: dict[str, Any] | str) -> Path:
    path = directory / "web.yml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def tls_doc(**extra: Any) -> dict[str, Any]:
    """TLS with relative file names (resolved against the config file's directory)."""
    return {"cert_file": "server.crt", "key_file": "server.key", **extra}


def auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def serve(cfg: WebConfig) -> AsyncIterator[str]:
    """A tiny app ("ok" on every route) behind the middleware, on 127.0.0.1."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[cfg.middleware])
    for route in ROUTES:
        app.router.add_get(route, ok)
    server = TestServer(app)
    await server.start_server(ssl=cfg.ssl_context)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@dataclass
class Client:
    """Every response is recorded, so tests can check that no secret ever appears."""

    session: aiohttp.ClientSession
    seen: list[str]

    async def get(self, url: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.session.get(url, **kw) as r:
            body = await r.text()
            self.seen.append(f"{r.status} {dict(r.headers)} {body}")
            return r.status, body, r.headers


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    # A new connection (and handshake) per request: what a reload changes shows at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield Client(session, [])


# --- TLS ---------------------------------------------------------------------------------------


async def test_tls_serves_and_default_trust_store_rejects_the_test_ca(tmp_path, client):
    write_pair(tmp_path, pki().server)
    cfg = WebConfig.load(write_config(tmp_path, {"tls_server_config": tls_doc()}))
    trusted = client_context(pki().ca.cert_pem)
    async with serve(cfg) as url:
        assert (await client.get(f"{url}/metrics", ssl=trusted))[:2] == (200, "ok")
        localhost = url.replace("127.0.0.1", "localhost")
        assert (await client.get(f"{localhost}/", ssl=trusted))[:2] == (200, "ok")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.get(f"{url}/", ssl=ssl.create_default_context())
        # TLS 1.2 is the default minimum: a TLS 1.1-only client gets no connection.
        old = client_context(pki().ca.cert_pem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises(aiohttp.ClientError):
            await client.get(f"{url}/", ssl=old)


async def test_tls_versions_ciphers_and_inline_pem(tmp_path, client):
    pair = pki().server
    doc = {
        "tls_server_config": {
            "cert": pair.cert_pem,
            "key": pair.key_pem,
            "max_version": "TLS12",
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
            "curve_preferences": ["X25519", "CurveP256"],
        }
    }
    cfg = WebConfig.load(write_config(tmp_path, doc))
    assert any("curve_preferences is ignored" in w for w in cfg.settings.warnings)
    async with serve(cfg) as url:
        host, port = url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(
            host, int(port), ssl=client_context(pki().ca.cert_pem), server_hostname="localhost"
        )
        sslobj = writer.get_extra_info("ssl_object")
        assert sslobj.version() == "TLSv1.2"
        assert sslobj.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        writer.close()
        await writer.wait_closed()


async def test_min_version_tls13_refuses_a_tls12_client(tmp_path, client):
    write_pair(tmp_path, pki().server)
    cfg = WebConfig.load(
        write_config(tmp_path, {"tls_server_config": tls_doc(min_version="TLS13")})
    )
    tls12 = client_context(pki().ca.cert_pem)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve(cfg) as url:
        with pytest.raises(aiohttp.ClientError):
            await client.get(f"{url}/", ssl=tls12)
        assert (await client.get(f"{url}/", ssl=client_context(pki().ca.cert_pem)))[0] == 200


async def test_mtls_require_and_verify(tmp_path, client):
    p = pki()
    write_pair(tmp_path, p.server)
    (tmp_path / "clients.pem").write_text(p.ca.cert_pem)
    tls = tls_doc(client_auth_type="RequireAndVerifyClientCert", client_ca_file="clients.pem")
    cfg = WebConfig.load(write_config(tmp_path, {"tls_server_config": tls}))
    async with serve(cfg) as url:
        with pytest.raises(aiohttp.ClientError):  # no client certificate
            await client.get(f"{url}/metrics", ssl=client_context(p.ca.cert_pem))
        with pytest.raises(aiohttp.ClientError):  # a certificate from a CA not trusted
            await client.get(f"{url}/metrics", ssl=client_context(p.ca.cert_pem, p.other_client))
        with_cert = client_context(p.ca.cert_pem, p.client)
        assert (await client.get(f"{url}/metrics", ssl=with_cert))[:2] == (200, "ok")


async def test_client_allowed_sans(tmp_path, client):
    p = pki()
    write_pair(tmp_path, p.server)
    (tmp_path / "clients.pem").write_text(p.ca.cert_pem)
    tls = tls_doc(
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file="clients.pem",
        client_allowed_sans=["spiffe://fleet/prometheus"],
    )
    cfg = WebConfig.load(write_config(tmp_path, {"tls_server_config": tls}))
    async with serve(cfg) as url:
        ok = await client.get(f"{url}/probe", ssl=client_context(p.ca.cert_pem, p.client))
        assert ok[:2] == (200, "ok")
        refused = await client.get(f"{url}/healthz", ssl=client_context(p.ca.cert_pem, p.intruder))
        assert refused[0] == 403


async def test_certificate_rotation_applies_to_the_next_handshake(tmp_path, client):
    p = pki()
    write_pair(tmp_path, p.server)
    cfg = WebConfig.load(write_config(tmp_path, {"tls_server_config": tls_doc()}), check_interval=0)
    trusted = client_context(p.ca.cert_pem)

    async def served_cert(url: str) -> str:
        host, port = url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(host, int(port), ssl=trusted)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return ssl.DER_cert_to_PEM_cert(der)

    def same(a: str, b: str) -> bool:
        load = x509.load_pem_x509_certificate
        return load(a.encode()) == load(b.encode())

    async with serve(cfg) as url, aiohttp.ClientSession() as keepalive:
        assert same(await served_cert(url), p.server.cert_pem)
        async with keepalive.get(f"{url}/", ssl=trusted) as r:
            assert r.status == 200
        write_pair(tmp_path, p.server2)
        # The very first handshake after the change already gets the new certificate.
        assert same(await served_cert(url), p.server2.cert_pem)
        assert cfg.reloads == 1
        async with keepalive.get(f"{url}/", ssl=trusted) as r:  # an open connection lives on
            assert r.status == 200


async def test_client_ca_rotation_drops_the_old_ca(tmp_path, client):
    p = pki()
    write_pair(tmp_path, p.server)
    (tmp_path / "clients.pem").write_text(p.ca.cert_pem)
    tls = tls_doc(client_auth_type="RequireAndVerifyClientCert", client_ca_file="clients.pem")
    cfg = WebConfig.load(write_config(tmp_path, {"tls_server_config": tls}), check_interval=0)
    old_client = client_context(p.ca.cert_pem, p.client)
    new_client = client_context(p.ca.cert_pem, p.other_client)
    async with serve(cfg) as url:
        assert (await client.get(f"{url}/", ssl=old_client))[0] == 200
        (tmp_path / "clients.pem").write_text(p.other_ca.cert_pem)
        assert (await client.get(f"{url}/", ssl=new_client))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await client.get(f"{url}/", ssl=old_client)


async def test_requiring_client_certificates_applies_to_the_next_connection(tmp_path, client):
    p = pki()
    write_pair(tmp_path, p.server)
    (tmp_path / "clients.pem").write_text(p.ca.cert_pem)
    path = write_config(tmp_path, {"tls_server_config": tls_doc()})
    cfg = WebConfig.load(path, check_interval=0)
    no_cert = client_context(p.ca.cert_pem)
    async with serve(cfg) as url:
        assert (await client.get(f"{url}/", ssl=no_cert))[0] == 200
        tls = tls_doc(client_auth_type="RequireAndVerifyClientCert", client_ca_file="clients.pem")
        write_config(tmp_path, {"tls_server_config": tls})
        # The connection whose handshake notices the change was created under the old
        # policy: it is refused rather than served without a certificate.
        for _ in range(2):
            with pytest.raises(aiohttp.ClientError):
                await client.get(f"{url}/", ssl=no_cert)
        assert (await client.get(f"{url}/", ssl=client_context(p.ca.cert_pem, p.client)))[0] == 200
        assert cfg.reloads == 1


# --- basic auth, rate limit, headers ---------------------------------------------------------


async def test_basic_auth(tmp_path, client, caplog):
    caplog.set_level(logging.DEBUG)
    hashed = hash_pw(PASSWORD)
    doc = {
        "basic_auth_users": {"alice": hashed, "bob": hash_pw("bobs password")},
        "http_server_config": {"headers": {"X-Frame-Options": "sameorigin"}},
    }
    cfg = WebConfig.load(write_config(tmp_path, doc))
    async with serve(cfg) as url:
        for route in ("/", "/metrics", "/probe"):
            assert (await client.get(url + route, headers=auth("alice", PASSWORD)))[:2] == (
                200,
                "ok",
            )
        refusals = [
            auth("alice", WRONG),
            auth("mallory", PASSWORD),  # unknown user
            auth("alice", PASSWORD + "x" * 80),  # over bcrypt's 72 bytes: a mismatch, no 500
            {},
            {"Authorization": "Bearer abc"},
            {"Authorization": "Basic !!!not-base64"},
            {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        ]
        for headers in refusals:
            status, _, response_headers = await client.get(f"{url}/metrics", headers=headers)
            assert status == 401, headers
            assert response_headers["WWW-Authenticate"] == 'Basic realm="fleet-exporter"'
            assert response_headers["X-Frame-Options"] == "sameorigin"
        # Unknown paths are refused before routing reveals anything.
        assert (await client.get(f"{url}/nope"))[0] == 401
        # kubelet probes need no credentials; they are the only open paths.
        for route in ("/healthz", "/-/healthy", "/-/ready"):
            assert (await client.get(url + route))[:2] == (200, "ok")
        assert (await client.get(f"{url}/nope", headers=auth("alice", PASSWORD)))[0] == 404
    everything = "\n".join([*client.seen, caplog.text])
    for secret in (PASSWORD, WRONG, hashed, hashed[7:]):
        assert secret not in everything


async def test_protect_everything_when_asked(tmp_path, client):
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hash_pw(PASSWORD)}})
    cfg = WebConfig.load(path, open_paths=frozenset())
    async with serve(cfg) as url:
        assert (await client.get(f"{url}/healthz"))[0] == 401
        assert (await client.get(f"{url}/healthz", headers=auth("alice", PASSWORD)))[0] == 200


@pytest.fixture
def bcrypt_calls(monkeypatch) -> list[tuple[bytes, bytes]]:
    """Every (password, hash) bcrypt was asked to check."""
    calls: list[tuple[bytes, bytes]] = []
    real = webconfig._checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "_checkpw", spy)
    return calls


async def test_unknown_users_cost_a_bcrypt_check_at_the_configured_cost(tmp_path, bcrypt_calls):
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()
    cfg = WebConfig.load(write_config(tmp_path, {"basic_auth_users": {"alice": hashed}}))
    async with serve(cfg) as url, aiohttp.ClientSession() as s:
        for _ in range(3):  # a verified password is checked once; failures every time
            for user, password, expected in (("alice", PASSWORD, 200), ("eve", PASSWORD, 401)):
                async with s.get(f"{url}/", headers=auth(user, password)) as r:
                    assert r.status == expected
    checked = [h for _, h in bcrypt_calls]
    assert len(checked) == 4
    assert checked[0] == hashed.encode()
    dummy = checked[1]
    assert dummy != hashed.encode() and dummy.startswith(b"$2b$05$")
    assert checked[1:] == [dummy] * 3


@contextlib.asynccontextmanager
async def from_address(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from ``address`` (any 127.x.y.z reaches 127.0.0.1)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def status_of(session: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    async with session.get(url, **kw) as r:
        await r.read()
        return r.status


async def test_failed_logins_cannot_evict_a_verified_password(tmp_path, bcrypt_calls):
    """Hundreds of wrong passwords from many addresses (the toolkit's 100-entry cache let
    200 evict the good one; the next scrape then queued behind them for 40 s)."""
    users = {"prometheus": hash_pw(PASSWORD), "grafana": hash_pw("another password 7c1d")}
    cfg = WebConfig.load(write_config(tmp_path, {"basic_auth_users": users}))
    good = auth("prometheus", PASSWORD)
    async with serve(cfg) as url:
        async with from_address("127.0.0.1") as prometheus:
            assert await status_of(prometheus, f"{url}/probe", headers=good) == 200
        assert bcrypt_calls[0][0] == PASSWORD.encode() and len(bcrypt_calls) == 1
        statuses = []
        for n in range(30):  # 30 addresses, each up to its allowance of failures
            async with from_address(f"127.0.0.{n + 2}") as attacker:
                for i in range(webconfig.PER_CLIENT.burst):
                    guess = auth("prometheus", f"guess-{n}-{i}")
                    statuses.append(await status_of(attacker, f"{url}/probe", headers=guess))
        assert statuses == [401] * 300
        assert len(bcrypt_calls) == 301  # every one of them was really checked
        async with from_address("127.0.0.1") as prometheus:
            for _ in range(5):
                assert await status_of(prometheus, f"{url}/probe", headers=good) == 200
        assert len(bcrypt_calls) == 301  # served from the verified entry: no bcrypt at all
        assert len(cfg._auth._verified) <= len(users)


async def test_failed_logins_are_limited_per_client_address(tmp_path, bcrypt_calls):
    users = {"prometheus": hash_pw(PASSWORD)}
    cfg = WebConfig.load(write_config(tmp_path, {"basic_auth_users": users}))
    good = auth("prometheus", PASSWORD)
    burst = webconfig.PER_CLIENT.burst
    async with serve(cfg) as url:
        async with from_address("127.0.0.7") as attacker:
            statuses = [
                await status_of(attacker, f"{url}/", headers=auth("prometheus", f"guess-{i}"))
                for i in range(burst + 50)
            ]
            assert statuses == [401] * burst + [429] * 50
            async with attacker.get(f"{url}/", headers=auth("prometheus", "x")) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
                assert "too many failed logins" in await r.text()
            # From the address that failed, even the right password waits its turn.
            assert await status_of(attacker, f"{url}/", headers=good) == 429
        assert len(bcrypt_calls) == burst  # the refused ones cost no bcrypt
        # Another address is not locked out: a first login there verifies at once.
        async with from_address("127.0.0.1") as prometheus:
            assert await status_of(prometheus, f"{url}/", headers=good) == 200
        # Requests without credentials are no login attempt: 401, never counted.
        async with from_address("127.0.0.8") as anonymous:
            assert [await status_of(anonymous, f"{url}/") for _ in range(30)] == [401] * 30


async def test_rate_limit_counts_failed_logins_not_good_ones(tmp_path, bcrypt_calls):
    users = {"prometheus": hash_pw(PASSWORD), "grafana": hash_pw(NEW_PASSWORD)}
    doc = {"basic_auth_users": users, "rate_limit": {"interval": "1h", "burst": 3}}
    cfg = WebConfig.load(write_config(tmp_path, doc))
    good = auth("prometheus", PASSWORD)
    async with serve(cfg) as url, aiohttp.ClientSession() as s:
        # A steady stream of good scrapes never spends the limit.
        assert [await status_of(s, f"{url}/probe", headers=good) for _ in range(50)] == [200] * 50
        # Failed logins do, across all addresses: 3, then 429 before any bcrypt.
        failed = []
        for n in range(5):
            async with from_address(f"127.0.0.{n + 2}") as attacker:
                failed.append(await status_of(attacker, f"{url}/", headers=auth("x", "y")))
        assert failed == [401, 401, 401, 429, 429]
        async with (
            from_address("127.0.0.9") as attacker,
            attacker.get(f"{url}/", headers=auth("prometheus", WRONG)) as r,
        ):
            assert r.status == 429 and int(r.headers["Retry-After"]) > 3000
        # The verified password is still served at once...
        assert [await status_of(s, f"{url}/probe", headers=good) for _ in range(5)] == [200] * 5
        # ...while a password not verified yet waits until failures stop (the price of
        # bounding bcrypt work overall).
        assert await status_of(s, f"{url}/", headers=auth("grafana", NEW_PASSWORD)) == 429
        assert await status_of(s, f"{url}/-/ready") == 200  # kubelet is not limited
    assert len(bcrypt_calls) == 4  # one good, three failed


async def test_rate_limit_without_users_limits_nothing(tmp_path, client, caplog):
    caplog.set_level(logging.INFO)
    cfg = WebConfig.load(write_config(tmp_path, {"rate_limit": {"interval": "1h", "burst": 1}}))
    assert "without basic_auth_users it has no effect" in caplog.text
    async with serve(cfg) as url:
        assert [(await client.get(f"{url}/metrics"))[0] for _ in range(10)] == [200] * 10


def test_token_bucket_refills_one_token_per_interval():
    now = [100.0]
    bucket = TokenBucket(RateLimit(interval=2.0, burst=2), clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.wait() == pytest.approx(2.0)  # waiting takes nothing
    assert bucket.take() == pytest.approx(2.0)
    now[0] += 1.0
    assert bucket.take() == pytest.approx(1.0)
    now[0] += 1.0
    assert bucket.take() == 0.0
    now[0] += 100.0  # never more than the burst
    assert [bucket.take() for _ in range(3)][2] > 0


async def test_configured_headers_on_every_response(tmp_path, client):
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'self'",
        "Strict-Transport-Security": "max-age=31536000",
        "X-XSS-Protection": "",  # blank: unset
    }
    cfg = WebConfig.load(write_config(tmp_path, {"http_server_config": {"headers": headers}}))
    async with serve(cfg) as url:
        for route, expected in (("/", 200), ("/missing", 404)):
            status, _, got = await client.get(url + route)
            assert status == expected
            assert got["Content-Security-Policy"] == "default-src 'self'"
            assert got["Strict-Transport-Security"] == "max-age=31536000"
            assert "X-XSS-Protection" not in got


# --- reload ------------------------------------------------------------------------------------


async def test_password_rotation_without_restart(tmp_path, client):
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hash_pw(PASSWORD)}})
    cfg = WebConfig.load(path, check_interval=0)
    async with serve(cfg) as url:
        assert (await client.get(f"{url}/", headers=auth("alice", PASSWORD)))[0] == 200
        write_config(tmp_path, {"basic_auth_users": {"alice": hash_pw(NEW_PASSWORD)}})
        assert (await client.get(f"{url}/", headers=auth("alice", PASSWORD)))[0] == 401
        assert (await client.get(f"{url}/", headers=auth("alice", NEW_PASSWORD)))[0] == 200
        assert cfg.reloads == 1


async def test_broken_new_file_keeps_the_old_config_and_logs_once(tmp_path, client, caplog):
    caplog.set_level(logging.DEBUG)
    hashed = hash_pw(PASSWORD)
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hashed}})
    cfg = WebConfig.load(path, check_interval=0)
    new_hash = hash_pw(NEW_PASSWORD)
    async with serve(cfg) as url:
        # Bad YAML on the very line that holds the new hash.
        path.write_text(f"basic_auth_users:\n  alice: {new_hash}\n   bob: [\n")
        for _ in range(5):
            assert (await client.get(f"{url}/", headers=auth("alice", PASSWORD)))[0] == 200
            assert (await client.get(f"{url}/", headers=auth("alice", NEW_PASSWORD)))[0] == 401
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert str(path) in errors[0].getMessage()
        assert cfg.last_error is not None and "line 3" in cfg.last_error
        # A different breakage is logged again, once.
        write_config(tmp_path, {"basic_auth_users": {"alice": "plaintext-" + NEW_PASSWORD}})
        for _ in range(3):
            assert (await client.get(f"{url}/", headers=auth("alice", PASSWORD)))[0] == 200
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 2
        assert "basic_auth_users.alice" in errors[1].getMessage()
        # Fixed: applied, and the error is cleared.
        write_config(tmp_path, {"basic_auth_users": {"alice": new_hash}})
        assert (await client.get(f"{url}/", headers=auth("alice", NEW_PASSWORD)))[0] == 200
        assert cfg.last_error is None and cfg.reload_failures == 2
    everything = "\n".join([*client.seen, caplog.text])
    for secret in (PASSWORD, NEW_PASSWORD, hashed, new_hash, new_hash[7:]):
        assert secret not in everything


def mismatched_key(d: Path) -> None:
    (d / "server.key").write_text(pki().server2.key_pem)


def names_missing_files(d: Path) -> None:
    write_config(d, {"tls_server_config": {"cert_file": "next.crt", "key_file": "next.key"}})


@pytest.mark.parametrize(
    ("breakage", "message", "fix"),
    [
        (
            mismatched_key,
            "does not match the certificate",
            lambda d: (d / "server.crt").write_text(pki().server2.cert_pem),
        ),
        (
            # A config naming certificate files written after it: retried when they appear.
            names_missing_files,
            "tls_server_config.cert_file: cannot read",
            lambda d: write_pair(d, pki().server2, "next"),
        ),
    ],
)
async def test_broken_tls_files_keep_the_old_certificate(
    tmp_path, client, caplog, breakage, message, fix
):
    p = pki()
    write_pair(tmp_path, p.server)
    cfg = WebConfig.load(write_config(tmp_path, {"tls_server_config": tls_doc()}), check_interval=0)
    trusted = client_context(p.ca.cert_pem)
    async with serve(cfg) as url:
        breakage(tmp_path)
        for _ in range(3):
            assert (await client.get(f"{url}/", ssl=trusted))[0] == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and message in errors[0]
        fix(tmp_path)
        assert (await client.get(f"{url}/", ssl=trusted))[0] == 200
        assert cfg.reloads == 1 and cfg.last_error is None
    assert p.server2.key_pem not in caplog.text


def test_checks_at_most_once_per_interval(tmp_path):
    now = [0.0]
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hash_pw(PASSWORD)}})
    cfg = WebConfig.load(path, clock=lambda: now[0])
    write_config(tmp_path, {"basic_auth_users": {"alice": hash_pw(NEW_PASSWORD)}})
    now[0] = 0.5
    assert not cfg.check()
    now[0] = 1.0
    assert cfg.check()
    now[0] = 5.0
    assert not cfg.check()  # nothing changed
    assert cfg.check(force=True) is False and cfg.reloads == 1


def test_turning_tls_on_needs_a_restart(tmp_path):
    write_pair(tmp_path, pki().server)
    path = write_config(tmp_path, {})
    cfg = WebConfig.load(path, check_interval=0)
    write_config(tmp_path, {"tls_server_config": tls_doc()})
    assert not cfg.check()
    assert cfg.ssl_context is None
    assert "needs a restart" in (cfg.last_error or "")


# --- errors ------------------------------------------------------------------------------------

BAD_HASH = "$2y$10$tooshortbutsecret"
BAD_CONFIGS: list[tuple[dict[str, Any] | str, str]] = [
    ({"tls_server_config": tls_doc(), "basic_auth": {}}, "top level.basic_auth: unknown key"),
    ({"tls_server_config": tls_doc(certfile="x")}, "tls_server_config.certfile: unknown key"),
    ({"http_server_config": {"http3": True}}, "http_server_config.http3: unknown key"),
    ({"basic_auth_users": {"alice": BAD_HASH}}, "basic_auth_users.alice: not a bcrypt hash"),
    ({"basic_auth_users": {"alice": None}}, "basic_auth_users.alice: not a bcrypt hash"),
    ({"tls_server_config": {"cert_file": "missing.crt", "key_file": "server.key"}}, "missing.crt"),
    ({"tls_server_config": {"cert_file": "server.crt"}}, "missing key_file"),
    ({"tls_server_config": tls_doc(key="inline")}, "tls_server_config.key: give either"),
    ({"tls_server_config": tls_doc(client_auth_type="Sometimes")}, "client_auth_type: must be"),
    (
        {"tls_server_config": tls_doc(client_auth_type="RequireAndVerifyClientCert")},
        "needs client_ca_file",
    ),
    ({"tls_server_config": tls_doc(client_ca_file="server.crt")}, "client_auth_type is NoClient"),
    (
        {"tls_server_config": tls_doc(client_allowed_sans=["a"])},
        "client_allowed_sans: needs client_auth_type",
    ),
    ({"tls_server_config": tls_doc(min_version="TLS14")}, "min_version: must be one of"),
    (
        {"tls_server_config": tls_doc(min_version="TLS13", max_version="TLS12")},
        "min_version: is above max_version",
    ),
    ({"tls_server_config": tls_doc(cipher_suites=["RC4"])}, "unknown cipher suite 'RC4'"),
    ({"tls_server_config": tls_doc(curve_preferences=["P1"])}, "unknown curve 'P1'"),
    ({"http_server_config": {"headers": {"Server": "x"}}}, "headers.Server: unknown key"),
    (
        {"http_server_config": {"headers": {"X-Frame-Options": "DENY"}}},
        "X-Frame-Options: must be one of deny, sameorigin",
    ),
    ({"http_server_config": {"http2": "yes please"}}, "http2: expected true or false"),
    ({"rate_limit": {"interval": 1, "burst": 2}}, "rate_limit.interval: expected a duration"),
    ({"rate_limit": {"interval": "1d", "burst": 2}}, "rate_limit.interval: expected a duration"),
    ({"rate_limit": {"interval": "1s", "burst": 0}}, "rate_limit.burst: must be at least 1"),
    ("basic_auth_users:\n  alice: a\n  alice: b\n", "duplicate key 'alice'"),
    (f"basic_auth_users:\n  alice: {BAD_HASH}\n bob: x\n", "line 3"),
    ("- just\n- a list\n", "top level: expected a mapping"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_CONFIGS)
def test_bad_config_is_a_clear_error(tmp_path, doc, message):
    write_pair(tmp_path, pki().server)
    path = write_config(tmp_path, doc)
    with pytest.raises(WebConfigError) as err:
        WebConfig.load(path)
    text = str(err.value)
    assert message in text and str(path) in text
    assert "tooshort" not in text and pki().server.key_pem not in text


def test_certificate_problems_are_named(tmp_path):
    p = pki()
    write_pair(tmp_path, p.server)
    (tmp_path / "server.key").write_text(p.server2.key_pem)
    with pytest.raises(WebConfigError, match="does not match the certificate"):
        WebConfig.load(write_config(tmp_path, {"tls_server_config": tls_doc()}))
    (tmp_path / "ca.pem").write_text("not a certificate")
    write_pair(tmp_path, p.server)
    tls = tls_doc(client_auth_type="RequireAndVerifyClientCert", client_ca_file="ca.pem")
    with pytest.raises(WebConfigError, match=r"client_ca_file: no valid PEM certificate"):
        WebConfig.load(write_config(tmp_path, {"tls_server_config": tls}))


def test_valid_settings_parse_like_the_toolkit(tmp_path):
    path = tmp_path / "web.yml"
    s = webconfig.parse(
        yaml.safe_dump(
            {
                "tls_server_config": tls_doc(client_auth_type="RequestClientCert"),
                "http_server_config": {"http2": False},
                "rate_limit": {"interval": "1m30s", "burst": 5},
            }
        ),
        path,
    )
    assert s.tls is not None and s.tls.cert_file == tmp_path / "server.crt"
    assert s.tls.min_version == ssl.TLSVersion.TLSv1_2
    assert s.tls.max_version == ssl.TLSVersion.TLSv1_3
    assert any("RequestClientCert" in w for w in s.warnings)
    assert s.rate_limit == RateLimit(interval=90.0, burst=5)
    assert webconfig.parse("rate_limit: {interval: '0', burst: 0}\n", path).rate_limit is None
    assert webconfig.parse("", path) == webconfig.Settings()
    # TLS settings alone that do not name a certificate leave TLS off, as in the toolkit.
    assert webconfig.parse("tls_server_config: {min_version: TLS13}\n", path).tls is None
    hashed = hash_pw("x")
    assert hashed not in repr(webconfig.parse(f"basic_auth_users: {{a: '{hashed}'}}", path))
