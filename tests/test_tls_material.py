"""The operator's certificate: never overwritten; errors name the file; warnings on names and expiry."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_cli import write_config

from nitro.transports.certnames import ID_ON_DNSSRV, ID_ON_XMPPADDR, certificate_names, covers
from nitro.transports.tls import TLSMaterialError, make_tls_context, read_material

NOW = datetime.datetime.now(datetime.UTC)


def write_pair(
    directory: Path,
    *,
    names: list[x509.GeneralName] | None = None,
    common_name: str = "localhost",
    valid_days: float = 365,
    key: ec.EllipticCurvePrivateKey | None = None,
    key_password: bytes | None = None,
) -> tuple[Path, Path]:
    """A certificate and key as an operator would install them (not made by Nitro)."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=max(1, 1 - valid_days)))
        .not_valid_after(NOW + datetime.timedelta(days=valid_days))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(key_password) if key_password else serialization.NoEncryption()
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert, key_file = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert, key_file


def tls_config(tmp_path: Path, **tls: Any) -> Any:
    return make_config(tmp_path, tls=tls)


@pytest.mark.parametrize("missing", ["key", "cert"])
def test_one_missing_file_is_an_error_and_the_other_is_kept(tmp_path: Path, missing: str) -> None:
    config = tls_config(tmp_path)
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    write_pair(cert.parent, names=[x509.DNSName("localhost")])
    (key if missing == "key" else cert).unlink()
    kept = cert if missing == "key" else key
    before = kept.read_bytes()
    with pytest.raises(TLSMaterialError) as raised:
        make_tls_context(config)
    gone = key if missing == "key" else cert
    assert f"TLS {'key' if missing == 'key' else 'certificate'} file {gone} does not exist" in str(
        raised.value
    )
    assert kept.read_bytes() == before
    assert not gone.exists()


def test_neither_file_generates_a_self_signed_pair(tmp_path: Path) -> None:
    config = tls_config(tmp_path)
    assert make_tls_context(config) is not None
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    material = read_material(cert, key)
    assert covers(material.leaf, "localhost")
    generated = cert.read_bytes()
    make_tls_context(config)  # a second start keeps it
    assert cert.read_bytes() == generated


async def test_serve_refuses_a_missing_key_in_one_line(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)  # [tls] generate = true (the default)
    cert, _key = write_pair(tmp_path, names=[x509.DNSName("localhost")])
    (tmp_path / "key.pem").unlink()
    before = cert.read_bytes()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nitro",
        "--config",
        str(config),
        "serve",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    text = output.decode()
    assert f"cannot serve: TLS key file {tmp_path / 'key.pem'} does not exist, but {cert} does" in text
    assert "Traceback" not in text
    assert cert.read_bytes() == before


@pytest.mark.parametrize(
    ("damage", "which", "message"),
    [
        (lambda cert, key: cert.write_text("not a certificate\n"), "cert", "not a PEM certificate"),
        (
            lambda cert, key: key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n"),
            "key",
            "not a PEM private key",
        ),
        (lambda cert, key: cert.write_bytes(b""), "cert", "not a PEM certificate"),
    ],
)
def test_pem_errors_name_the_file(tmp_path: Path, damage: Any, which: str, message: str) -> None:
    config = tls_config(tmp_path)
    cert, key = write_pair(config.path(config.tls.cert).parent)
    damage(cert, key)
    with pytest.raises(TLSMaterialError) as raised:
        make_tls_context(config)
    assert str(raised.value).startswith(f"{cert if which == 'cert' else key}: {message}")


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path) -> None:
    config = tls_config(tmp_path)
    _cert, key = write_pair(config.path(config.tls.cert).parent, key_password=b"secret")
    with pytest.raises(TLSMaterialError) as raised:
        make_tls_context(config)
    assert str(raised.value) == f"{key}: the private key is encrypted; Nitro needs it unencrypted"


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    config = tls_config(tmp_path)
    cert, key = write_pair(config.path(config.tls.cert).parent)
    other_key = ec.generate_private_key(ec.SECP256R1())
    key.write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TLSMaterialError) as raised:
        make_tls_context(config)
    assert str(raised.value) == f"{key}: this private key does not belong to the certificate in {cert}"


def test_start_warns_when_the_certificate_names_another_domain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tls_config(tmp_path)
    cert, _key = write_pair(config.path(config.tls.cert).parent, names=[x509.DNSName("example.org")])
    with caplog.at_level(logging.WARNING, logger="nitro.transports.tls"):
        assert make_tls_context(config) is not None
    assert f"{cert}: the certificate does not cover localhost (it names example.org)" in caplog.messages


@pytest.mark.parametrize(("days", "warned"), [(5, True), (13, True), (15, False), (-1, True)])
def test_start_warns_when_the_certificate_expires_within_14_days(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, days: float, warned: bool
) -> None:
    config = tls_config(tmp_path)
    cert, _key = write_pair(
        config.path(config.tls.cert).parent, names=[x509.DNSName("localhost")], valid_days=days
    )
    with caplog.at_level(logging.WARNING, logger="nitro.transports.tls"):
        make_tls_context(config)
    expiry = [message for message in caplog.messages if message.startswith(f"{cert}: the certificate expire")]
    assert bool(expiry) == warned
    if days < 0:
        assert "expired on" in expiry[0]
    elif warned:
        assert f"in {round(days)} days" in expiry[0]


def _other_name(oid: x509.ObjectIdentifier, tag: int, text: str) -> x509.OtherName:
    body = text.encode()
    return x509.OtherName(oid, bytes([tag, len(body)]) + body)


@pytest.mark.parametrize(
    ("names", "common_name", "domain", "expected"),
    [
        ([x509.DNSName("chat.example.com")], "x", "chat.example.com", True),
        ([x509.DNSName("CHAT.Example.com")], "x", "chat.example.com", True),
        ([x509.DNSName("*.example.com")], "x", "chat.example.com", True),
        ([x509.DNSName("*.example.com")], "x", "example.com", False),  # RFC 6125 §6.4.3: one label only
        ([x509.DNSName("*.example.com")], "x", "a.b.example.com", False),
        ([_other_name(ID_ON_DNSSRV, 0x16, "_xmpp-client.example.com")], "x", "example.com", True),
        ([_other_name(ID_ON_DNSSRV, 0x16, "_xmpp-server.example.com")], "x", "example.com", False),
        ([_other_name(ID_ON_XMPPADDR, 0x0C, "example.com")], "x", "example.com", True),
        ([x509.DNSName("example.org")], "example.com", "example.com", False),  # CN ignored beside a SAN
        (None, "example.com", "example.com", True),  # no SAN at all: the CN
    ],
)
def test_names_a_certificate_covers(
    tmp_path: Path, names: list[x509.GeneralName] | None, common_name: str, domain: str, expected: bool
) -> None:
    cert, key = write_pair(tmp_path, names=names, common_name=common_name)
    leaf = read_material(cert, key).leaf
    assert covers(leaf, domain) is expected, certificate_names(leaf)
