"""Operations: `nitro check`, the TLS material checks, process limits and what CLI commands report."""
