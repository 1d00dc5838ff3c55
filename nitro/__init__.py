"""Nitro: an asyncio XMPP server (RFC 6120/6121) with layered storage."""

__version__ = "0.1.0"
