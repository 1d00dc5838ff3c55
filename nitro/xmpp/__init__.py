"""Pure XMPP protocol code, no asyncio and no I/O: JIDs, errors, the stream parser, SASL, forms."""
