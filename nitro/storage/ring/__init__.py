"""The Redis ring: instances with health checks, ketama placement by owner, fenced fills, pub/sub."""
