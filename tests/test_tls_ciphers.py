"""TLS 1.2 offers AEAD suites only (Mozilla's "intermediate" profile); TLS 1.3 is unchanged."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from conftest import DOMAIN

from nitro.config import Config
from nitro.server import Server
from nitro.transports.tls import make_tls_context

CBC_SUITES = ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"]
AEAD_SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
]


def tls12_client(server: Server, suite: str) -> ssl.SSLContext:
    """A client that speaks only TLS 1.2 and offers only `suite`."""
    context = ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    return context


async def handshake(server: Server, context: ssl.SSLContext) -> tuple[str, str]:
    """Direct TLS (XEP-0368) to the server: the negotiated (suite, version)."""
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", server.config.c2s.direct_tls_port, ssl=context, server_hostname=DOMAIN
        ),
        10,
    )
    try:
        name, version, _bits = writer.get_extra_info("cipher")
        return name, version
    finally:
        writer.close()


@pytest.mark.parametrize("suite", CBC_SUITES)
async def test_a_tls12_client_offering_only_cbc_is_refused(server: Server, suite: str) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(server, tls12_client(server, suite))


@pytest.mark.parametrize("suite", AEAD_SUITES)
async def test_a_tls12_client_offering_an_aead_suite_connects(server: Server, suite: str) -> None:
    assert await handshake(server, tls12_client(server, suite)) == (suite, "TLSv1.2")


async def test_tls13_is_unchanged(server: Server) -> None:
    context = ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))
    name, version = await handshake(server, context)
    assert version == "TLSv1.3"
    assert name.startswith("TLS_")


def test_every_tls12_suite_the_server_allows_is_aead(config: Config) -> None:
    context = make_tls_context(config)
    assert context is not None
    tls12 = [cipher for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(cipher["aead"] for cipher in tls12), [c["name"] for c in tls12 if not c["aead"]]
