"""An in-memory certificate authority for the simulated fleet.

The simulator must look like a real API server to the exporter's TLS code: a private CA the
default trust store does not know, a serving certificate for the names kubeconfigs use, and
client certificates for clusters that authenticate with them instead of tokens. Keys are EC
P-256 and never touch disk except for the instant `server_context` needs to hand them to
`ssl` (which only loads certificate chains from files), inside a private temporary directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost", "127.0.0.1", "kubernetes.default.svc")
_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: str
    key_pem: str


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str = "fleet-exporter simulator CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM).decode()

    def _issue(
        self, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))

    def issue_server(self, names: tuple[str, ...] = SERVER_NAMES) -> KeyPair:
        """A serving certificate whose SANs are `names` (IP addresses become IP SANs)."""
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        return self._issue(subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(
        self,
        common_name: str,
        organization: str = "fleet-exporter",
        sans: list[x509.GeneralName] | None = None,
    ) -> KeyPair:
        """A client certificate; kube-apiserver reads CN as the user and O as a group.
        `sans` (e.g. a DNS name or SPIFFE URI) are for servers that match on SANs."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        return self._issue(subject, ExtendedKeyUsageOID.CLIENT_AUTH, sans or [])


def _load_chain(ctx: ssl.SSLContext, pair: KeyPair) -> None:
    """`ssl` loads certificate chains only from files: write them into a private (0700)
    temporary directory, load, and delete them at once."""
    with tempfile.TemporaryDirectory(prefix="fleet-sim-tls-") as tmp:
        cert_file, key_file = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_file.write_text(pair.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_text(pair.key_pem)
        ctx.load_cert_chain(cert_file, key_file)


def server_context(ca: CertificateAuthority, server: KeyPair) -> ssl.SSLContext:
    """A TLS server context that presents `server` and optionally verifies client
    certificates against `ca` (CERT_OPTIONAL: token clients need not present one)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, server)
    ctx.load_verify_locations(cadata=ca.cert_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_pem: str, client: KeyPair | None = None) -> ssl.SSLContext:
    """A client context trusting only `ca_pem`, optionally presenting `client` (for tests
    and tools; the exporter builds its own contexts from kubeconfigs)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    if client is not None:
        _load_chain(ctx, client)
    return ctx
