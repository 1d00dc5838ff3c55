"""Several Nitro nodes as one server: node identity in the Redis ring, stanzas between nodes over NATS."""
