"""The typed sections of the configuration with their defaults: one frozen dataclass per TOML table.

`nitro.config` reads TOML into these (and re-exports them); `nitro.config_checks` validates them. The plugin
tables are in nitro/config_plugins.py.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

from nitro.config_plugins import PluginsSection
from nitro.xmpp.jid import JID


@dataclass(frozen=True, slots=True)
class ServerSection:
    domain: str = "localhost"
    admins: tuple[str, ...] = ()
    # Processes of this node sharing its listening sockets (SO_REUSEPORT), each a [cluster] member named
    # "<node>-w<i>" (nitro/cluster/workers.py); "auto": one per core.
    workers: int | str = 1


@dataclass(frozen=True, slots=True)
class StorageSection:
    dsn: str = "sqlite+aiosqlite:///var/nitro.db"
    # MariaDB/MySQL only (SQLite has one file and no pool): see config/nitro.toml.
    pool_size: int = 10
    max_overflow: int = 20
    pool_timeout: float = 10.0
    pool_recycle: float = 3600.0
    pool_pre_ping: bool = True
    connect_timeout: float = 5.0
    query_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class C2SSection:
    host: str = "127.0.0.1"
    port: int = 5222
    direct_tls_port: int = 5223
    backlog: int = 4096
    require_encryption: bool = True
    allow_plain_without_tls: bool = False
    max_stanza_bytes: int = 262144
    negotiation_timeout: float = 60.0
    idle_ping_after: float = 300.0
    ping_timeout: float = 60.0
    keepalive_interval: float = 120.0
    write_timeout: float = 30.0
    release_parser_after: float = 5.0
    max_resources_per_account: int = 10
    max_negotiating: int = 100
    max_logins_per_account: int = 4  # streams of one account between SASL and bind at once


@dataclass(frozen=True, slots=True)
class HttpSection:
    """The HTTP server: WebSocket (RFC 7395), BOSH, XEP-0156 discovery and the web client."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5280  # plain HTTP; 0 turns it off
    tls_port: int = 5281  # HTTPS with the [tls] certificate; 0 turns it off
    trusted_proxies: tuple[str, ...] = ()  # addresses or CIDR networks whose X-Forwarded-* are believed
    max_body_bytes: int = 1048576  # aiohttp's client_max_size: what a handler may read whole
    header_timeout: float = 10.0  # seconds to send a request's headers
    web_client: bool = True
    web_client_dir: str = "var/web/converse.js"


@dataclass(frozen=True, slots=True)
class BoshSection:
    """BOSH (XEP-0124, XEP-0206) at /http-bind of the HTTP server: what each session is held to."""

    max_wait: int = 60  # longest a request is held ('wait' is capped to it)
    max_hold: int = 1  # most requests held at once ('hold' is capped to it; 'requests' is hold + 1)
    max_inactivity: int = 60  # seconds without a request before the session ends ('inactivity')
    polling: int = 2  # shortest polling interval of a polling session (hold = 0)
    max_pause: int = 300  # longest 'pause' a client may ask for
    max_body_bytes: int = 1048576  # larger request bodies get HTTP 413
    read_timeout: float = 10.0  # seconds a request body may take to arrive
    cors_origins: tuple[str, ...] = ("*",)  # Access-Control-Allow-Origin: "*", or these origins only


@dataclass(frozen=True, slots=True)
class TLSSection:
    cert: str = "var/tls/cert.pem"
    key: str = "var/tls/key.pem"
    generate: bool = True


@dataclass(frozen=True, slots=True)
class AuthSection:
    max_failures_per_stream: int = 3
    throttle_failures: int = 5
    throttle_window: float = 60.0
    scram_iterations: int = 4096


@dataclass(frozen=True, slots=True)
class RegistrationSection:
    open: bool = True
    min_password_length: int = 6
    max_per_address: int = 5
    window: float = 60.0
    # Addresses or CIDR networks whose registrations are not limited (Prosody exempts loopback too).
    throttle_exempt: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class RosterSection:
    max_items: int = 1000  # per account, pending requests from strangers included; 0: no limit


@dataclass(frozen=True, slots=True)
class OfflineSection:
    quota: int = 1000


@dataclass(frozen=True, slots=True)
class StreamManagementSection:
    resume_timeout: float = 300.0
    ack_request_every: int = 5
    max_unacked: int = 5000
    max_unacked_bytes: int = 1024 * 1024  # per session, serialised size of the queued stanzas
    max_unacked_bytes_total: int = 256 * 1024 * 1024  # all sessions of this process together


@dataclass(frozen=True, slots=True)
class ArchiveSection:
    default: str = "always"
    retention_days: int = 7  # as Prosody's archive_expires_after = "1w"; 0 keeps messages forever
    max_page_size: int = 250
    # The asynchronous writer (nitro/modules/archive_writer.py): rows per transaction, seconds a row may
    # wait for others to join its batch, rows waiting at most before senders are paused (backpressure).
    batch_size: int = 1000
    batch_delay: float = 0.02
    max_pending: int = 10000


@dataclass(frozen=True, slots=True)
class PepSection:
    max_item_bytes: int = 131072
    max_items_per_node: int = 256
    max_nodes: int = 1000  # per account
    max_items_per_account: int = 2000  # over all of an account's nodes; 0: no limit


@dataclass(frozen=True, slots=True)
class PrivateSection:
    max_namespaces: int = 100  # private XML elements (XEP-0049) per account; 0: no limit


@dataclass(frozen=True, slots=True)
class VCardSection:
    max_bytes: int = 131072


@dataclass(frozen=True, slots=True)
class ModulesSection:
    disabled: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoggingSection:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class MetricsSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5290
    token: str = ""
    lag_interval: float = 0.1


@dataclass(frozen=True, slots=True)
class RedisInstance:
    """One instance of the ring: a URL ("redis://host:port/db") and its share of the keys."""

    SHORTHAND: typing.ClassVar[str] = "url"  # a plain string in the list is the url

    url: str = ""
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RedisSection:
    instances: tuple[RedisInstance, ...] = ()
    prefix: str = "nitro"
    health_interval: float = 1.0
    health_timeout: float = 0.5
    failures_before_out: int = 2
    socket_timeout: float = 1.0
    value_ttl: float = 3600.0
    generation_ttl: float = 86400.0
    session_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class CacheSection:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    ttl: float = 300.0


@dataclass(frozen=True, slots=True)
class GCSection:
    """Garbage collection: start-up frozen out, collections paced by a clock (observe/gc_pacer.py)."""

    freeze_after_start: bool = True
    threshold0: int = 10000
    threshold1: int = 2
    threshold2: int = 100
    young_interval: float = 0.1  # 0: no pacing, the thresholds alone
    middle_every: int = 3
    full_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class LimitsSection:
    """What one client connection may cost (nitro/transports/limits.py; see config/nitro.toml)."""

    bytes_per_second: int = 10_000  # 0: no byte rate
    stanzas_per_second: float = 50.0  # in cost units (most stanzas cost 1); 0: no stanza rate
    burst_seconds: float = 2.0
    max_connections_per_address: int = 100  # 0: no cap
    exempt_addresses: tuple[str, ...] = ()  # addresses and networks the per-address cap leaves alone
    max_names_before_auth: int = 256  # distinct XML names an unauthenticated stream may use
    preauth_streams_per_thread: int = 64  # 0: parse unauthenticated streams on the event loop's thread


@dataclass(frozen=True, slots=True)
class RuntimeSection:
    uvloop: bool = True  # uvloop as the event loop when it is installed; false: asyncio's own
    malloc_mmap_threshold: int = (
        128 * 1024
    )  # glibc's mmap threshold, fixed (nitro/observe/heap.py); 0: dynamic


@dataclass(frozen=True, slots=True)
class AdminSection:
    """The live admin channel (`nitro status`, `sessions`, `kick`, `reload`; `user …` while running)."""

    socket: str = "var/nitro.sock"  # a Unix socket, mode 0600; "" turns the channel off
    pid_file: str = "var/nitro.pid"  # for `nitro reload` by signal when there is no socket; "" for none


@dataclass(frozen=True, slots=True)
class ClusterSection:
    """Several nodes as one server (nitro/cluster/): off while `node` is empty; needs `[redis] instances`."""

    node: str = ""  # this node's name, unique in the cluster (a second node claiming it refuses to start)
    name: str = "nitro"  # the cluster's name in NATS subjects (nitro.<name>.node.<node>)
    nats: tuple[str, ...] = ("nats://127.0.0.1:4222",)  # NATS servers (any one of a NATS cluster will do)
    nats_user: str = ""  # NATS credentials: user and password, or a token, or a .creds file
    nats_password: str = ""
    nats_token: str = ""
    nats_creds: str = ""  # relative to the config file's directory
    heartbeat_ttl: float = 10.0  # a node whose heartbeat is this old is dead; refreshed every ttl / 3
    request_timeout: float = 2.0  # a stanza for another node unanswered this long goes offline / bounces
    connect_timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class UpgradeSection:
    """Zero-downtime upgrades (`nitro upgrade`, SIGUSR2; nitro/ops/upgrade.py)."""

    ready_timeout: float = 30.0  # seconds the successor has to check itself and accept, else rollback
    drain_rate: float = 200.0  # sessions handed over (or closed) per second: no reconnect storm
    drain_deadline: float = 60.0  # seconds after ready: what is left is handled at once, then the old exits
    command: tuple[str, ...] = ()  # the successor's command before `--config FILE serve`; () = this Python
    proof_timeout: float = (
        2.0  # seconds a client without XEP-0198 has to answer the closing ping (and SIGTERM)
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    storage: StorageSection = field(default_factory=StorageSection)
    c2s: C2SSection = field(default_factory=C2SSection)
    http: HttpSection = field(default_factory=HttpSection)
    bosh: BoshSection = field(default_factory=BoshSection)
    tls: TLSSection = field(default_factory=TLSSection)
    auth: AuthSection = field(default_factory=AuthSection)
    registration: RegistrationSection = field(default_factory=RegistrationSection)
    roster: RosterSection = field(default_factory=RosterSection)
    offline: OfflineSection = field(default_factory=OfflineSection)
    stream_management: StreamManagementSection = field(default_factory=StreamManagementSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    pep: PepSection = field(default_factory=PepSection)
    private: PrivateSection = field(default_factory=PrivateSection)
    vcard: VCardSection = field(default_factory=VCardSection)
    modules: ModulesSection = field(default_factory=ModulesSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    redis: RedisSection = field(default_factory=RedisSection)
    cache: CacheSection = field(default_factory=CacheSection)
    gc: GCSection = field(default_factory=GCSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    admin: AdminSection = field(default_factory=AdminSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    upgrade: UpgradeSection = field(default_factory=UpgradeSection)
    base_dir: Path = Path()
    # The file this configuration was read from (what a reload reads again); not part of equality.
    file: Path | None = field(default=None, compare=False)

    def path(self, relative: str) -> Path:
        """A path from the config: relative ones are relative to the config file's directory (`base_dir`;
        the working directory when Nitro runs on its built-in defaults)."""
        return self.base_dir / relative

    @property
    def admin_jids(self) -> frozenset[JID]:
        return frozenset(JID.parse(admin).bare for admin in self.server.admins)
