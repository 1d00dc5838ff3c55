"""Harness and benchmarks that drive a running Nitro from outside (not part of the test suite)."""
