"""Transports: how a stream's elements travel (TCP with STARTTLS or Direct TLS, WebSocket, BOSH)."""
