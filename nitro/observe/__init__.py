"""Observability and runtime tuning: metrics, structured logs, the event loop and GC settings."""
