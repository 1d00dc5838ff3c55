"""`nitro check` on [tls]: the files exist (or will be generated), parse, match, cover the domain and
are in date; the key is not readable by everyone. Reads only: never generates anything."""

from __future__ import annotations

import stat
from collections.abc import Iterator

from nitro.config import Config
from nitro.ops.findings import Finding, error, ok, warn
from nitro.transports.certnames import certificate_names
from nitro.transports.tls import (
    TLSMaterialError,
    certificate_problems,
    one_missing_message,
    read_material,
    server_context,
)


def check_tls(config: Config) -> Iterator[Finding]:
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    domain = config.server.domain
    if not cert.exists() and not key.exists():
        if config.tls.generate:
            yield warn(
                f"tls: neither {cert} nor {key} exists: the first start generates a self-signed certificate "
                f"for {domain} (clients must be told to trust it)"
            )
        elif config.c2s.require_encryption:
            yield error(
                f"tls: encryption is required but neither {cert} nor {key} exists ([tls].generate is off)"
            )
        else:
            yield warn(f"tls: no certificate at {cert}: STARTTLS and Direct TLS will be off")
        return
    if not (cert.exists() and key.exists()):
        yield error(f"tls: {one_missing_message(cert, key, cert.exists())}")
        return
    try:
        material = read_material(cert, key)
        server_context(cert, key)  # what OpenSSL itself thinks of them
    except TLSMaterialError as exc:
        yield error(f"tls: {exc}")
        return
    leaf = material.leaf
    yield ok(
        f"tls: {cert} names {', '.join(certificate_names(leaf)) or 'nothing'}, valid until "
        f"{leaf.not_valid_after_utc:%Y-%m-%d} UTC; {key} matches it"
    )
    for problem in certificate_problems(material, domain):
        yield error(f"tls: {problem.text}") if problem.refused else warn(f"tls: {problem.text}")
    if leaf.issuer == leaf.subject and len(material.chain) == 1:
        yield warn(f"tls: {cert} is self-signed: clients must be told to trust it")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o004:
        yield warn(f"tls: {key} can be read by every user (mode {mode:o}): chmod 600 (or 640) it")
