"""Server-side protection from a Prometheus exporter-toolkit web config (``--web.config.file``).

Operators already write one file for every Prometheus exporter (TLS, client certificates,
bcrypt basic auth, a rate limit, a few response headers); this module reads the same file,
strictly, so a typo is an error naming the key instead of a silently open server.

Where Python's ``ssl`` cannot do exactly what Go's ``crypto/tls`` does, the difference is
explicit: a warning logged at each load, or an error naming the key.

- ``RequestClientCert``: the toolkit asks for a certificate and never checks it, so access is
  the same as ``NoClientCert``; here no certificate is requested at all.
- ``RequireAnyClientCert`` accepts any certificate in Go. ``ssl`` verifies every certificate
  it accepts, so here it needs ``client_ca_file`` and behaves as RequireAndVerifyClientCert.
- ``VerifyClientCertIfGiven``/``RequireAndVerifyClientCert`` need ``client_ca_file`` (Go
  would fall back to the system roots, which must never authenticate clients).
- ``curve_preferences`` is validated and ignored (Python 3.11 cannot set a group list);
  ``http2`` is accepted and ignored (aiohttp serves HTTP/1.1). ``cipher_suites`` is honoured:
  Go's TLS 1.2 suite names map to OpenSSL's, and TLS 1.3 names are ignored, as in Go.
- ``client_allowed_sans`` is checked per request (403) rather than in the handshake, because
  ``ssl`` has no verify callback; the effect on who is served is the same.

Decision on logins: nothing a client does can lock Prometheus out. A (user, password) that
verified once is remembered (an HMAC of it, one per configured user) and served from then on
without bcrypt and without any limit; failed attempts never touch it (the toolkit's
100-entry random-eviction cache let 200 wrong passwords evict it, after which each scrape
queued behind the attackers' bcrypt checks). What is rate-limited is *failed logins*: each
failure takes a token from its client address's bucket (``PER_CLIENT``: 10 at once, then
one a second) and from the overall bucket, which is the file's ``rate_limit`` when set;
while either is empty, further attempts from there are answered 429 before any bcrypt,
and at most ``MAX_WAITING`` attempts wait for a check at once. So ``rate_limit`` here
limits failed logins across all clients, not requests: a steady stream of good scrapes
never spends it, and without ``basic_auth_users`` it limits nothing (a warning says so).
The price: while a flood keeps the overall bucket empty, a password not yet verified since
start (or since it changed) is refused too, until the flood stops.

Decision on kubelet probes: ``/healthz``, ``/-/healthy`` and ``/-/ready`` skip basic auth and
the rate limit (kubelet cannot send credentials, a liveness probe must not get 429, and they
reveal nothing). Everything else, including ``/metrics``, ``/probe`` and the pages, is
protected. TLS and client certificates apply to every connection (with required client
certificates, use tcpSocket or exec probes). Pass ``open_paths=frozenset()`` to protect all.

The file and the files it names are re-read at most once per ``check_interval`` (from the
request middleware and from every TLS ClientHello), compared by content hash. A change is
applied only if the whole new configuration loads; otherwise the old one stays and the error
is logged once per distinct broken state. New certificates and client CAs take effect from
the very next handshake: the ClientHello callback switches the connection to the newly built
``SSLContext`` (``load_cert_chain`` on the listening context would reach only connections
created after the call, and its CA store can only grow). A connection created just before a
change of client_auth_type, TLS versions or ciphers is refused in its handshake rather than
served under the old policy. Connections already established stay up, as in Go. Turning TLS
on or off needs a restart, as with the toolkit.

Secrets (passwords, bcrypt hashes, inline keys) never appear in errors, logs or responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import ssl
import tempfile
import time
import warnings
from base64 import b64decode
from binascii import Error as Base64Error
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web
from cryptography import x509

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/-/healthy", "/-/ready"})
REALM = "fleet-exporter"
MAX_FILE_BYTES = 1024 * 1024

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",  # the toolkit's old name for RequireAnyClientCert
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's crypto/tls CipherSuites() names for TLS 1.0-1.2 -> OpenSSL names.
GO_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
GO_TLS13_CIPHERS = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
GO_CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")
# The toolkit allows these response headers only; None = any value.
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DURATION = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


class WebConfigError(Exception):
    """One line naming the file and the key; never contains a secret."""


# --- the parsed file -------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    """``tls_server_config``, with paths already resolved against the file's directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: frozenset[str] | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: tuple[str, ...] = ()  # OpenSSL names, in the configured order
    prefer_server_cipher_suites: bool = True

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` tokens, one more every ``interval`` seconds."""

    interval: float
    burst: int


# Failed logins one client address may make: 10 at once, then one a second.
PER_CLIENT = RateLimit(interval=1.0, burst=10)
MAX_CLIENTS = 4096  # addresses remembered for their failures; the longest quiet go first
MAX_WAITING = 16  # login attempts waiting for a bcrypt check; more are refused at once


@dataclass(frozen=True)
class Settings:
    tls: TLSSettings | None = None
    http2: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    rate_limit: RateLimit | None = None
    warnings: tuple[str, ...] = ()  # what is accepted but not honoured exactly


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, like Go's yaml.UnmarshalStrict."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):  # unhashable keys fail below, clearly
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


class _Parser:
    """Strict reading of one document; every error names ``path`` and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []
        self.has_users = False

    def fail(self, where: str, problem: str) -> WebConfigError:
        return WebConfigError(f"web config {self.path}: {where}: {problem}")

    def mapping(self, raw: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(where, f"expected a mapping, got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                known = ", ".join(allowed)
                raise self.fail(f"{where}.{key}", f"unknown key (known keys: {known})")
        return raw

    def string(self, raw: Any, where: str) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise self.fail(where, f"expected a string, got {type(raw).__name__}")
        return raw or None

    def boolean(self, raw: Any, where: str, default: bool) -> bool:
        if raw is None:
            return default
        if not isinstance(raw, bool):
            raise self.fail(where, "expected true or false")
        return raw

    def strings(self, raw: Any, where: str) -> list[str] | None:
        if raw is None:
            return None
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise self.fail(where, "expected a list of strings")
        return raw

    def file(self, raw: Any, where: str) -> Path | None:
        name = self.string(raw, where)
        return self.path.parent / name if name else None

    def document(self, text: str) -> Settings:
        try:
            raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as e:
            # Never str(e): PyYAML quotes the offending line, which may hold a hash or key.
            mark = getattr(e, "problem_mark", None)
            at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
            problem = getattr(e, "problem", None) or "invalid YAML"
            raise self.fail(at, f"not valid YAML: {problem}") from None
        top = self.mapping(
            raw,
            "top level",
            ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"),
        )
        http = self.mapping(
            top.get("http_server_config"), "http_server_config", ("http2", "headers")
        )
        users = self.users(top.get("basic_auth_users"))
        self.has_users = bool(users)
        return Settings(
            tls=self.tls(top.get("tls_server_config")),
            http2=self.boolean(http.get("http2"), "http_server_config.http2", True),
            headers=self.headers(http.get("headers")),
            users=users,
            rate_limit=self.rate_limit(top.get("rate_limit")),
            warnings=tuple(self.warnings),
        )

    def tls(self, raw: Any) -> TLSSettings | None:
        w = "tls_server_config"
        keys = (
            *("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type"),
            *("client_ca_file", "client_allowed_sans", "min_version", "max_version"),
            *("cipher_suites", "curve_preferences", "prefer_server_cipher_suites"),
        )
        raw = self.mapping(raw, w, keys)
        cert, key = self.string(raw.get("cert"), f"{w}.cert"), raw.get("key")
        if key is not None and not isinstance(key, str):
            raise self.fail(f"{w}.key", "expected a PEM string")
        key = key or None
        client_ca = self.string(raw.get("client_ca"), f"{w}.client_ca")
        cert_file = self.file(raw.get("cert_file"), f"{w}.cert_file")
        key_file = self.file(raw.get("key_file"), f"{w}.key_file")
        ca_file = self.file(raw.get("client_ca_file"), f"{w}.client_ca_file")
        auth = self.string(raw.get("client_auth_type"), f"{w}.client_auth_type")
        # The toolkit's rule: any of these turns TLS on; the rest alone do not.
        if not any((cert, key, client_ca, cert_file, key_file, ca_file, auth)):
            return None
        for inline, path, name in ((cert, cert_file, "cert"), (key, key_file, "key")):
            if inline and path:
                raise self.fail(f"{w}.{name}", f"give either {name} or {name}_file, not both")
            if not inline and not path:
                raise self.fail(w, f"missing {name}_file (or inline {name})")
        if client_ca and ca_file:
            raise self.fail(f"{w}.client_ca", "give either client_ca or client_ca_file, not both")
        auth = auth or "NoClientCert"
        if auth not in CLIENT_AUTH_TYPES:
            raise self.fail(
                f"{w}.client_auth_type", f"must be one of {', '.join(CLIENT_AUTH_TYPES)}"
            )
        has_ca = bool(client_ca or ca_file)
        if has_ca and auth == "NoClientCert":
            raise self.fail(f"{w}.client_ca_file", "set, but client_auth_type is NoClientCert")
        if auth == "RequestClientCert":
            self.warnings.append(
                "client_auth_type RequestClientCert: client certificates are not requested "
                "(the toolkit requests but never checks them, so access is the same)"
            )
        elif auth != "NoClientCert" and not has_ca:
            raise self.fail(
                f"{w}.client_auth_type",
                f"{auth} needs client_ca_file here (Python's ssl verifies every client "
                "certificate it accepts; the system roots never authenticate clients)",
            )
        elif auth in ("RequireAnyClientCert", "RequireClientCert"):
            self.warnings.append(
                f"client_auth_type {auth}: client certificates are verified against "
                "client_ca_file (as RequireAndVerifyClientCert)"
            )
        sans = self.strings(raw.get("client_allowed_sans"), f"{w}.client_allowed_sans")
        if sans is not None:
            if _VERIFY_MODES[auth] != ssl.CERT_REQUIRED:
                raise self.fail(
                    f"{w}.client_allowed_sans",
                    "needs client_auth_type RequireAndVerifyClientCert (or RequireAnyClientCert)",
                )
            if not sans:
                raise self.fail(f"{w}.client_allowed_sans", "empty: no client could connect")
        versions = {}
        for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
            value = self.string(raw.get(name), f"{w}.{name}") or default
            if value not in TLS_VERSIONS:
                raise self.fail(f"{w}.{name}", f"must be one of {', '.join(TLS_VERSIONS)}")
            versions[name] = TLS_VERSIONS[value]
        if versions["min_version"] > versions["max_version"]:
            raise self.fail(f"{w}.min_version", "is above max_version")
        if versions["min_version"] < ssl.TLSVersion.TLSv1_2:
            self.warnings.append(
                "min_version below TLS12: OpenSSL's security level may still refuse TLS 1.0/1.1"
            )
        self.curves(raw.get("curve_preferences"))
        return TLSSettings(
            cert_file=cert_file,
            key_file=key_file,
            cert=cert,
            key=key,
            client_ca_file=ca_file,
            client_ca=client_ca,
            client_auth_type=auth,
            client_allowed_sans=frozenset(sans) if sans is not None else None,
            ciphers=self.ciphers(raw.get("cipher_suites")),
            prefer_server_cipher_suites=self.boolean(
                raw.get("prefer_server_cipher_suites"), f"{w}.prefer_server_cipher_suites", True
            ),
            **versions,
        )

    def ciphers(self, raw: Any) -> tuple[str, ...]:
        where = "tls_server_config.cipher_suites"
        names = self.strings(raw, where) or []
        for name in names:
            if name not in GO_CIPHERS and name not in GO_TLS13_CIPHERS:
                raise self.fail(where, f"unknown cipher suite {name!r}")
        mapped = tuple(GO_CIPHERS[n] for n in names if n in GO_CIPHERS)
        if names and not mapped:
            raise self.fail(where, "lists no TLS 1.2 suite (TLS 1.3 suites are not configurable)")
        return mapped

    def curves(self, raw: Any) -> None:
        where = "tls_server_config.curve_preferences"
        names = self.strings(raw, where) or []
        for name in names:
            if name not in GO_CURVES:
                raise self.fail(where, f"unknown curve {name!r} (known: {', '.join(GO_CURVES)})")
        if names:
            self.warnings.append("curve_preferences is ignored: OpenSSL's default groups apply")

    def headers(self, raw: Any) -> tuple[tuple[str, str], ...]:
        where = "http_server_config.headers"
        raw = self.mapping(raw, where, tuple(HEADERS))
        out = []
        for name, value in raw.items():
            value = self.string(value, f"{where}.{name}")
            allowed = HEADERS[name]
            if value and allowed is not None and value not in allowed:
                raise self.fail(f"{where}.{name}", f"must be one of {', '.join(allowed)}")
            if value:
                out.append((name, value))
        return tuple(out)

    def users(self, raw: Any) -> dict[str, bytes]:
        where = "basic_auth_users"
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(where, "expected a mapping of user names to bcrypt hashes")
        users = {}
        for user, hashed in raw.items():
            if not isinstance(user, str) or not user:
                raise self.fail(where, f"user names must be non-empty strings (quote {user!r})")
            # Never show the value: a hash can be cracked offline.
            if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
                raise self.fail(
                    f"{where}.{user}",
                    "not a bcrypt hash ($2a$/$2b$/$2y$, cost, 53 characters; "
                    "make one with: htpasswd -nBC 10 '' | tr -d ':\\n')",
                )
            if not 4 <= int(hashed[4:6]) <= 31:
                raise self.fail(f"{where}.{user}", "bcrypt cost must be between 04 and 31")
            users[user] = hashed.encode()
        return users

    def rate_limit(self, raw: Any) -> RateLimit | None:
        where = "rate_limit"
        raw = self.mapping(raw, where, ("interval", "burst"))
        if not raw:
            return None
        interval = self.duration(raw.get("interval", "0"), f"{where}.interval")
        burst = raw.get("burst", 0)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
            raise self.fail(f"{where}.burst", "expected a whole number")
        if interval == 0:
            return None  # the toolkit's "0 disables the rate limiter"
        if burst < 1:
            raise self.fail(f"{where}.burst", "must be at least 1 (0 would refuse every request)")
        if not self.has_users:
            self.warnings.append(
                "rate_limit limits failed basic-auth logins; without basic_auth_users it "
                "has no effect"
            )
        return RateLimit(interval, burst)

    def duration(self, value: Any, where: str) -> float:
        """Seconds from a Go duration string (``1s``, ``1m30s``, ``250ms``, ``0``)."""
        if isinstance(value, str) and value.strip() == "0":
            return 0.0
        if not isinstance(value, str) or not _DURATION.fullmatch(value.strip()):
            raise self.fail(where, f"expected a duration such as 1s or 250ms, got {value!r}")
        return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))


def parse(text: str, path: Path) -> Settings:
    """The settings in ``text`` (the contents of ``path``; relative file names resolve
    against its directory). Raises WebConfigError. Reads no other file."""
    return _Parser(path).document(text)


# --- TLS ---------------------------------------------------------------------------------------


def _read(path: Path, where: str, config: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise WebConfigError(
            f"web config {config}: {where}: cannot read {path}: {e.strerror}"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise WebConfigError(f"web config {config}: {where}: {path} is over {MAX_FILE_BYTES} bytes")
    return data


def _load_chain(ctx: ssl.SSLContext, tls: TLSSettings, config: Path) -> None:
    """``ssl`` loads chains only from files: inline PEM goes through a private 0700
    directory that is removed at once."""
    where = "tls_server_config.cert_file/key_file"

    def no_password() -> str:
        return ""  # an encrypted key fails to load instead of prompting on a terminal

    with tempfile.TemporaryDirectory(prefix="fleet-exporter-web-") as tmp:
        cert, key = tls.cert_file, tls.key_file
        if tls.cert:
            cert = Path(tmp, "tls.crt")
            cert.write_text(tls.cert)
        if tls.key:
            key = Path(tmp, "tls.key")
            key.touch(mode=0o600)
            key.write_text(tls.key)
        assert cert is not None and key is not None
        for p, name in ((cert, "cert_file"), (key, "key_file")):
            _read(p, f"tls_server_config.{name}", config)  # a clear "cannot read" first
        try:
            ctx.load_cert_chain(cert, key, password=no_password)
        except ssl.SSLError as e:
            problem = (
                "the key does not match the certificate"
                if "KEY_VALUES_MISMATCH" in str(e)
                else "not a valid PEM certificate and unencrypted private key"
            )
            raise WebConfigError(f"web config {config}: {where}: {problem}") from None


class ListeningContext(ssl.SSLContext):
    """The context the server listens with. Each connection is stamped with the
    ``generation`` of connection-level settings it was created under, so the ClientHello
    callback can tell a connection created just before a reload from one created after."""

    generation = 0

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        sslobj = super().wrap_bio(*args, **kwargs)
        sslobj.webconfig_generation = self.generation  # type: ignore[attr-defined]
        return sslobj


def build_ssl_context(
    tls: TLSSettings, config: Path, cls: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    """A complete server context for ``tls``. It trusts only the configured client CA
    (never the system store) and defaults to TLS 1.2..1.3."""
    ctx = cls(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS10/TLS11 are deprecated
        ctx.minimum_version = tls.min_version
        ctx.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.ciphers:
        try:
            ctx.set_ciphers(":".join(tls.ciphers))
        except ssl.SSLError:
            raise WebConfigError(
                f"web config {config}: tls_server_config.cipher_suites: "
                "none of these suites is available in this OpenSSL"
            ) from None
    _load_chain(ctx, tls, config)
    if tls.client_ca_file or tls.client_ca:
        where = "client_ca_file" if tls.client_ca_file else "client_ca"
        cadata = tls.client_ca or _read(tls.client_ca_file, where, config).decode(
            "ascii", "replace"
        )  # type: ignore[arg-type]
        try:
            ctx.load_verify_locations(cadata=cadata)
        except (ssl.SSLError, ValueError):
            raise WebConfigError(
                f"web config {config}: tls_server_config.{where}: no valid PEM certificate"
            ) from None
    ctx.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    return ctx


def _connection_settings(ctx: ssl.SSLContext) -> tuple:
    """What OpenSSL copies into each connection when it is created (SSL_new), before the
    ClientHello callback could switch it to another context."""
    ciphers = tuple(c["name"] for c in ctx.get_ciphers())
    return (ctx.verify_mode, ctx.minimum_version, ctx.maximum_version, ctx.options, ciphers)


def _retune(front: ListeningContext, new: ssl.SSLContext) -> None:
    """Give the listening context the connection-level settings of ``new``; when they
    change, connections created before are refused in their ClientHello (see
    ``WebConfig._on_client_hello``)."""
    if _connection_settings(front) == _connection_settings(new):
        return
    front.generation += 1
    front.verify_mode = new.verify_mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        front.minimum_version = new.minimum_version
        front.maximum_version = new.maximum_version
    front.options = new.options
    front.set_ciphers(":".join(c["name"] for c in new.get_ciphers() if c["protocol"] != "TLSv1.3"))


def peer_sans(request: web.Request) -> set[str]:
    """The SAN values of the client certificate, formatted as the toolkit compares them."""
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        return set()
    try:
        ext = x509.load_der_x509_certificate(der).extensions
        names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return set()
    values: set[str] = set()
    for kind in (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier):
        values.update(names.get_values_for_type(kind))
    values.update(str(ip) for ip in names.get_values_for_type(x509.IPAddress))
    return values


# --- rate limit and basic auth ----------------------------------------------------------------


class TokenBucket:
    """Go's ``rate.NewLimiter(rate.Every(interval), burst).Allow()``: starts full."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._at = clock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        wait = self.wait()
        if not wait:
            self._tokens -= 1
        return wait

    def wait(self) -> float:
        """0 when a token is available, else the seconds until one is; takes none."""
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._tokens = min(self.limit.burst, self._tokens + elapsed / self.limit.interval)
        self._at = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) * self.limit.interval


@functools.cache
def _dummy_tail() -> bytes:
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(4))[7:]


def dummy_hash(cost: int) -> bytes:
    """A valid bcrypt hash of a random password at ``cost``: checking an unknown user costs
    the same as checking a real one, so timing does not reveal which users exist."""
    return b"$2b$%02d$" % cost + _dummy_tail()


def _basic_credentials(header: str) -> tuple[bytes, bytes] | None:
    """(user, password) from ``Authorization: Basic ...`` as Go's ``Request.BasicAuth``."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True)
    except (Base64Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. a password over bcrypt's 72-byte limit: not a match
        return False


class _Authenticator:
    """Basic auth where failures cost the one who fails (module docstring, "Decision on
    logins"). bcrypt checks run off the event loop, one at a time (they are CPU-bound,
    like the toolkit's mutex). Verified passwords are kept as an HMAC of user, hash and
    password under a key that lives in memory only, so no password is kept."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._verified: dict[str, bytes] = {}  # user -> HMAC of the password that verified
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()  # failed logins
        self._lock = asyncio.Lock()
        self._waiting = 0

    def _mac(self, *parts: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "big") + part)
        return mac.digest()

    async def check(
        self,
        users: Mapping[str, bytes],
        dummy: bytes,
        header: str,
        client: str,
        overall: TokenBucket | None,
    ) -> tuple[int, float]:
        """200 (let in), 401 (no valid credentials) or 429 with the seconds to wait."""
        creds = _basic_credentials(header)
        if creds is None:
            return 401, 0.0  # no login attempted: nothing to check, nothing to count
        user_bytes, password = creds
        try:
            user = user_bytes.decode()
        except UnicodeDecodeError:
            user = ""
        hashed = users.get(user)
        mac = self._mac(user_bytes, hashed or dummy, password)
        if hashed is not None and hmac.compare_digest(self._verified.get(user, b""), mac):
            return 200, 0.0
        wait = self._refusal(client, overall)
        if wait or self._waiting >= MAX_WAITING:
            return 429, wait or 1.0
        self._waiting += 1
        try:
            async with self._lock:
                wait = self._refusal(client, overall)  # others failed while we waited
                if wait:
                    return 429, wait
                # Unknown users cost a check against the dummy hash: timing does not tell.
                ok = await asyncio.to_thread(_checkpw, password, hashed or dummy)
        finally:
            self._waiting -= 1
        if ok and hashed is not None:
            self._verified = {u: m for u, m in self._verified.items() if u in users}
            self._verified[user] = mac
            return 200, 0.0
        self._failed(client, overall)
        return 401, 0.0

    def _refusal(self, client: str, overall: TokenBucket | None) -> float:
        """Seconds until this client may try again (0: now)."""
        bucket = self._clients.get(client)
        return max(bucket.wait() if bucket else 0.0, overall.wait() if overall else 0.0)

    def _failed(self, client: str, overall: TokenBucket | None) -> None:
        bucket = self._clients.pop(client, None) or TokenBucket(PER_CLIENT, self._clock)
        bucket.take()
        self._clients[client] = bucket  # most recently failing last
        if len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        if overall is not None:
            overall.take()


# --- the live configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    settings: Settings
    digest: bytes
    context: ssl.SSLContext | None
    bucket: TokenBucket | None  # failed logins across all clients (rate_limit)
    dummy: bytes


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebConfig:
    """A web config file, kept current. Hand ``ssl_context`` to the server and put
    ``middleware`` first in the app's middlewares."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        open_paths: frozenset[str] = HEALTH_PATHS,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.open_paths = open_paths
        self.check_interval = check_interval
        self._clock = clock
        self._auth = _Authenticator(clock)
        self._failed: bytes | None = None
        self._attempted: tuple[Path, ...] = ()
        self.last_error: str | None = None
        self.reloads = 0
        self.reload_failures = 0
        self._state = self._load(None)
        front = self._state.context
        self._front = front if isinstance(front, ListeningContext) else None
        if self._front is not None:
            self._front.sni_callback = self._on_client_hello
        self._checked = clock()
        self._log_loaded()

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kw: Any) -> WebConfig:
        """Read and check the file and everything it names. Raises WebConfigError."""
        return cls(path, **kw)

    @property
    def settings(self) -> Settings:
        return self._state.settings

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The listening context (None: plain HTTP). It stays the same object for the
        process lifetime; reloads switch each new handshake to the current certificates."""
        return self._front

    # reading

    def _digest(self, files: tuple[Path, ...]) -> bytes:
        """Content hash of the config file and the files it names (missing ones included)."""
        h = hashlib.sha256()
        for p in (self.path, *files):
            h.update(os.fsencode(p) + b"\0")
            try:
                with p.open("rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
            except OSError as e:
                h.update(b"error %d\0" % (e.errno or 0))
                continue
            h.update(len(data).to_bytes(8, "big") + data)
        return h.digest()

    def _watched(self) -> tuple[Path, ...]:
        tls = self._state.settings.tls
        return tuple(dict.fromkeys((*(tls.files if tls else ()), *self._attempted)))

    def _load(self, old: _State | None) -> _State:
        text = _read(self.path, "file", self.path)
        try:
            settings = parse(text.decode("utf-8"), self.path)
        except UnicodeDecodeError:
            raise WebConfigError(f"web config {self.path}: file: not UTF-8 text") from None
        files = settings.tls.files if settings.tls else ()
        self._attempted = files
        digest = self._digest(files)
        cls = ListeningContext if old is None else ssl.SSLContext
        context = build_ssl_context(settings.tls, self.path, cls) if settings.tls else None
        if old is not None and (old.context is None) != (context is None):
            raise WebConfigError(
                f"web config {self.path}: tls_server_config: turning TLS on or off needs a restart"
            )
        bucket = old.bucket if old is not None else None
        if settings.rate_limit is None:
            bucket = None
        elif bucket is None or bucket.limit != settings.rate_limit:
            bucket = TokenBucket(settings.rate_limit, self._clock)  # else keep its tokens
        costs = [int(h[4:6]) for h in settings.users.values()]
        return _State(settings, digest, context, bucket, dummy_hash(max(costs, default=10)))

    def _log_loaded(self) -> None:
        s = self.settings
        tls = f"TLS ({s.tls.client_auth_type})" if s.tls else "plain HTTP"
        limit = s.rate_limit
        rate = f"{limit.burst} per {limit.interval:g}s" if limit and s.users else "off"
        users = len(s.users)
        log.info(
            "web config %s: %s, basic auth: %d users, failed logins limited: %s",
            self.path,
            tls,
            users,
            rate,
        )
        for warning in s.warnings:
            log.warning("web config %s: %s", self.path, warning)

    def check(self, *, force: bool = False) -> bool:
        """Reload if the file or a file it names changed (at most once per check_interval
        unless ``force``). True when a new configuration was applied. Never raises: a
        broken file keeps the old configuration and is logged once."""
        now = self._clock()
        if not force and now - self._checked < self.check_interval:
            return False
        self._checked = now
        old = self._state
        if self._digest(self._watched()) in (old.digest, self._failed):
            return False
        try:
            new = self._load(old)
        except Exception as e:
            # WebConfigError is safe to show; anything else only by type (it is a bug here).
            if isinstance(e, WebConfigError):
                self.last_error = str(e)
            else:
                self.last_error = f"web config {self.path}: cannot load: {type(e).__name__}"
            # The files of the attempted config are watched too: one that appears later
            # (a certificate written after the config naming it) is a change to retry on.
            self._failed = self._digest(self._watched())
            self.reload_failures += 1
            log.error("%s; keeping the previous web config", self.last_error)
            return False
        if self._front is not None and new.context is not None:
            _retune(self._front, new.context)
        self._state, self._failed, self.last_error = new, None, None
        self.reloads += 1
        self._log_loaded()
        return True

    def _on_client_hello(
        self, sslobj: Any, server_name: str | None, ctx: ListeningContext
    ) -> int | None:
        """Runs in every handshake: pick up changed files, then serve the newest context.

        A connection created under older connection-level settings (client_auth_type, TLS
        versions, ciphers) is refused: it would otherwise be served by the old policy,
        e.g. without the client certificate the new file requires. The client retries."""
        try:
            self.check()
            if getattr(sslobj, "webconfig_generation", ctx.generation) != ctx.generation:
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            current = self._state.context
            if current is not None and current is not ctx:
                sslobj.context = current
        except Exception:  # an exception here would abort the handshake with no trace
            log.exception("web config: cannot apply the current TLS settings")
        return None

    # serving

    def _is_open(self, request: web.Request) -> bool:
        """Open paths are matched on the route the router resolved, not the raw path."""
        if request.method not in ("GET", "HEAD"):
            return False
        info = request.match_info
        if info.http_exception is not None:
            return False
        resource = info.route.resource
        return resource is not None and resource.canonical in self.open_paths

    async def _guard(self, state: _State, request: web.Request) -> web.StreamResponse | None:
        """The refusal for this request, or None to serve it."""
        tls = state.settings.tls
        sans = tls.client_allowed_sans if tls is not None else None
        if sans is not None and not sans & peer_sans(request):
            return _plain(403, "Forbidden: client certificate not allowed")
        if self._is_open(request):
            return None
        users = state.settings.users
        if not users:
            return None
        header = request.headers.get("Authorization", "")
        client = request.remote or ""
        status, wait = await self._auth.check(users, state.dummy, header, client, state.bucket)
        if status == 429:
            response = _plain(429, "Too Many Requests: too many failed logins")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        if status == 401:
            response = _plain(401, "Unauthorized")
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
            return response
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """TLS client SAN check, basic auth (failed logins rate-limited), then the configured
        headers."""
        self.check()
        state = self._state
        try:
            response = await self._guard(state, request) or await handler(request)
        except web.HTTPException as exc:
            _set_headers(exc, state.settings.headers)
            raise
        _set_headers(response, state.settings.headers)
        return response


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def _set_headers(response: web.StreamResponse, headers: tuple[tuple[str, str], ...]) -> None:
    if not response.prepared:
        for name, value in headers:
            response.headers[name] = value
