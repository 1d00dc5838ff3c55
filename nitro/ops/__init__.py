"""Operations: `nitro check` (config, TLS material, storage, limits), what CLI commands report, the admin
channel of a running server, reload, XEP-0227 import and export."""
