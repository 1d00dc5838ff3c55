"""Plugins over TCP: the XEP-0114 component listener and links, the plugin hosts, and the supervisor."""
