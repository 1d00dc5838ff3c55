"""A load generator for XMPP servers: raw asyncio sockets, uvloop, worker processes, loopback only.

`client` is the sans-IO client state machine and `connection` its asyncio driver; `worker` runs the
clients in worker processes; `scenarios` drives them from the parent and turns reports into figures;
`accounts` and `provision` define and create the accounts; `process` runs the servers under test.
"""
