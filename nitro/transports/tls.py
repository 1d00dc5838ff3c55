"""TLS for c2s: the operator's certificate and key, read and checked (never overwritten); a self-signed
pair made only when neither file exists; server contexts with TLS 1.3 and TLS 1.2 AEAD suites only."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from nitro.config import Config, ConfigError
from nitro.transports.certnames import certificate_names, covers

log = logging.getLogger(__name__)

# Mozilla's "intermediate" profile for TLS 1.2 (ssl-config.mozilla.org, version 5.7): ECDHE (and DHE)
# key exchange with AES-GCM or ChaCha20-Poly1305 only, no CBC. TLS 1.3 suites are not set by this
# string and keep OpenSSL's defaults (all AEAD).
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

EXPIRY_WARNING = datetime.timedelta(days=14)


class TLSMaterialError(ConfigError):
    """The certificate or key cannot be used; the message names the file and says why."""


@dataclass(frozen=True, slots=True)
class Material:
    """A certificate chain (leaf first) and the private key that matches the leaf."""

    cert_path: Path
    key_path: Path
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def ensure_certificate(cert_path: Path, key_path: Path, domain: str) -> bool:
    """Write a self-signed certificate for `domain` (and its subdomains) when NEITHER file exists; True
    when it did. Exactly one of them missing is an error naming it: never replace an operator's file."""
    cert_exists, key_exists = cert_path.exists(), key_path.exists()
    if cert_exists and key_exists:
        return False
    if cert_exists or key_exists:
        raise TLSMaterialError(one_missing_message(cert_path, key_path, cert_exists))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]
    with contextlib.suppress(ValueError):  # an IP-literal domain gets an IP SAN instead
        alt_names = [x509.IPAddress(ipaddress.ip_address(domain))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _create(key_path, key_bytes, 0o600)  # O_EXCL: a file that appeared meanwhile is kept, and we fail
    _create(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a self-signed certificate for %s at %s (key %s)", domain, cert_path, key_path)
    return True


def one_missing_message(cert_path: Path, key_path: Path, cert_exists: bool) -> str:
    missing, present = (key_path, cert_path) if cert_exists else (cert_path, key_path)
    what = "key" if cert_exists else "certificate"
    return (
        f"TLS {what} file {missing} does not exist, but {present} does: fix [tls] "
        f"(a self-signed pair is generated only when neither file exists, never over an existing one)"
    )


def _create(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise TLSMaterialError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def read_material(cert_path: Path, key_path: Path) -> Material:
    """Parse the PEM certificate chain and private key; each error names its file and what is wrong."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(_read(cert_path)))
    except ValueError as exc:
        raise TLSMaterialError(f"{cert_path}: not a PEM certificate ({exc})") from exc
    key_pem = _read(key_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:  # "Password was not given but private key is encrypted"
        raise TLSMaterialError(
            f"{key_path}: the private key is encrypted; Nitro needs it unencrypted"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSMaterialError(f"{key_path}: not a PEM private key ({exc})") from exc
    material = Material(cert_path, key_path, chain, key)
    if _public_der(material.leaf.public_key()) != _public_der(key.public_key()):
        raise TLSMaterialError(
            f"{key_path}: this private key does not belong to the certificate in {cert_path}"
        )
    return material


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSMaterialError(f"cannot read {path}: {exc.strerror}") from exc


def _public_der(public_key: object) -> bytes:
    encode = getattr(public_key, "public_bytes", None)
    if encode is None:
        return b""
    der: bytes = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


@dataclass(frozen=True, slots=True)
class CertificateProblem:
    """Something wrong with the leaf certificate; `refused`: clients that verify it will not connect."""

    text: str
    refused: bool


def certificate_problems(
    material: Material, domain: str, now: datetime.datetime | None = None
) -> list[CertificateProblem]:
    """The leaf does not cover `domain`, is not valid yet, has expired, or expires within EXPIRY_WARNING."""
    now = now if now is not None else datetime.datetime.now(datetime.UTC)
    leaf, path = material.leaf, material.cert_path
    problems = []
    if not covers(leaf, domain):
        names = ", ".join(certificate_names(leaf)) or "no names"
        problems.append(
            CertificateProblem(f"{path}: the certificate does not cover {domain} (it names {names})", True)
        )
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now < not_before:
        text = f"{path}: the certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC"
        problems.append(CertificateProblem(text, True))
    if not_after <= now:
        problems.append(
            CertificateProblem(f"{path}: the certificate expired on {not_after:%Y-%m-%d %H:%M} UTC", True)
        )
    elif not_after - now < EXPIRY_WARNING:
        days = round((not_after - now) / datetime.timedelta(days=1))
        text = f"{path}: the certificate expires on {not_after:%Y-%m-%d %H:%M} UTC, in {days} days"
        problems.append(CertificateProblem(text, False))
    return problems


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server context for STARTTLS and Direct TLS (XEP-0368 asks for ALPN 'xmpp-client')."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    try:
        context.load_cert_chain(cert_path, key_path, password=_refuse_password)
    except ssl.SSLError as exc:
        raise TLSMaterialError(f"{cert_path}, {key_path}: OpenSSL cannot use them: {exc}") from exc
    context.set_alpn_protocols(["xmpp-client"])
    return context


def _refuse_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TLSMaterialError("the private key is encrypted; Nitro needs it unencrypted")


def make_tls_context(config: Config) -> ssl.SSLContext | None:
    """The c2s context from [tls]: generated when asked and neither file exists, checked, warnings logged.

    No files and no `generate`: None (STARTTLS and Direct TLS off) unless encryption is required."""
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    if config.tls.generate:
        ensure_certificate(cert, key, config.server.domain)
    elif not cert.exists() and not key.exists():
        if config.c2s.require_encryption:
            raise TLSMaterialError(
                f"TLS is required but neither {cert} nor {key} exists ([tls].generate is off)"
            )
        log.warning("no TLS certificate at %s: STARTTLS and Direct TLS are off", cert)
        return None
    elif not (cert.exists() and key.exists()):
        raise TLSMaterialError(one_missing_message(cert, key, cert.exists()))
    material = read_material(cert, key)
    for problem in certificate_problems(material, config.server.domain):
        log.warning("%s", problem.text)  # at start a warning: the operator may be renewing it right now
    return server_context(cert, key)
