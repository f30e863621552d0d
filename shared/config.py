"""Connection settings shared by every service.

Each service declares one settings class (``services/<name>/settings.py``) that composes these groups;
all read ``RMBG_``-prefixed variables with ``__`` for nesting, e.g. ``RMBG_POSTGRES__DSN`` or
``RMBG_IMAGES__MAX_BYTES``. Settings are frozen and validated once at start; outside
``environment=dev`` the built-in development credentials are refused.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.allocator import MAX_REUSE_BELOW_MIB
from shared.exceptions import ConfigError
from shared.models import ModelSettings

# Consumer groups, named once: the persister's sweeper reads the inference group's committed offsets.
INFERENCE_GROUP_ID = "rmbg-inference"

DEV_S3_ACCESS_KEY = "rmbg-dev"
# Development-only secrets, refused outside environment=dev|test (BaseServiceSettings below).
DEV_KEY_PEPPER = "rmbg-dev-pepper-change-me"
DEV_ENCRYPTION_KEY = "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktY2hhbmdlISE="
DEV_S3_SECRET_KEY = "rmbg-dev-secret-change-me"  # noqa: S105 - the documented dev default, refused outside dev


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PostgresSettings(_Group):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/rmbg")
    min_pool: int = Field(default=1, ge=1)
    # Four services x 10 connections stays well under the design's max_connections=100.
    max_pool: int = Field(default=10, ge=1, le=100)
    command_timeout_s: float = Field(default=30.0, gt=0)


class RedisSettings(_Group):
    # Empty disables the cache: reads go to PostgreSQL (the cache is optional by design).
    url: str = "redis://127.0.0.1:6379/0"
    job_ttl_s: int = Field(default=3600, ge=1)
    socket_timeout_s: float = Field(default=0.5, gt=0)


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "rmbg"
    # Small enough that a dead member is noticed in seconds; heartbeat must stay below a third of it.
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    # Kafka's default message limit is 1 MiB; claim-check keeps every message far below it.
    max_message_bytes: int = Field(default=1_000_000, ge=10_000, le=1_048_576)
    request_timeout_ms: int = Field(default=15_000, ge=1000)
    # How long the broker may hold a consumer's fetch when no partition has data: Kafka's and aiokafka's
    # default. Kafka answers a parked fetch as soon as any of its partitions has a record, so this adds no
    # latency there. The embedded stack's broker (Tansu) answers a fetch over several partitions only at
    # this limit, so `rmbg up` and the drills set 100 ms for it (docs/test-servers.md).
    fetch_max_wait_ms: int = Field(default=500, ge=1, le=60_000)

    @model_validator(mode="after")
    def _fetch_wait_within_request_timeout(self) -> KafkaSettings:
        # aiokafka times every request out after request_timeout_ms: a longer held fetch would always fail.
        if self.fetch_max_wait_ms >= self.request_timeout_ms:
            raise ValueError(
                f"fetch_max_wait_ms ({self.fetch_max_wait_ms}) must be under "
                f"request_timeout_ms ({self.request_timeout_ms})"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats_within_the_session(self) -> KafkaSettings:
        # Kafka's rule (its docs: "typically no higher than 1/3"): with fewer than three heartbeats per
        # session one late heartbeat expires the member, and the group rebalances over and over.
        # Neither aiokafka nor the broker checks it.
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a third of "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        return self


class TopicSettings(_Group):
    uploads: str = "rmbg.uploads.v1"
    jobs: str = "rmbg.jobs.v1"
    results: str = "rmbg.results.v1"
    job_events: str = "rmbg.job-events.v1"
    dead_letter: str = "rmbg.dead-letter.v1"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def all(self) -> list[str]:
        return [self.uploads, self.jobs, self.results, self.job_events, self.dead_letter]


class S3Settings(_Group):
    endpoint_url: str | None = "http://127.0.0.1:8333"
    region: str = "us-east-1"
    # AWS prefers virtual-hosted addressing (OSS requires it); MinIO/SeaweedFS take path style.
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    access_key: str = DEV_S3_ACCESS_KEY
    secret_key: SecretStr = SecretStr(DEV_S3_SECRET_KEY)
    bucket: str = "rmbg"
    # Where clients reach the store, when not at endpoint_url (e.g. https://media.example.com in front of
    # an in-cluster MinIO): presigned URLs are signed for this host. None: endpoint_url.
    public_endpoint_url: str | None = None
    max_pool_connections: int = Field(default=32, ge=1)


class AuthSettings(_Group):
    """Secrets of access control (docs/access.md); the development defaults are refused outside dev."""

    # HMAC key for API-key hashes: rotating it invalidates every key, so it is set once per deployment.
    key_pepper: SecretStr = SecretStr(DEV_KEY_PEPPER)
    # Fernet keys, comma-separated, newest first: the first encrypts, all decrypt (rotation).
    # Generate one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'
    encryption_keys: SecretStr = SecretStr(DEV_ENCRYPTION_KEY)
    # How long a verified key is served from Redis; bounds a revocation's delay only when Redis was down
    # while revoking (otherwise a revocation is seen by the next request).
    key_cache_ttl_s: int = Field(default=60, ge=1, le=3600)


class ImageLimits(_Group):
    """What an image may be, the same for every service (``RMBG_IMAGES__*``): ingest refuses larger ones,
    inference and the persister refuse to read larger objects (a row edited by hand cannot OOM them)."""

    # 25 MiB covers a 24 MP JPEG from a camera; larger uploads are refused with 413 before decoding.
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # 40 MP (e.g. 8000x5000): above it a decode needs >120 MB of RGB and is treated as a bomb.
    max_pixels: int = Field(default=40_000_000, ge=1)


class OutboundSettings(_Group):
    """What the services may contact on a user's behalf: image URLs (ingest) and webhooks (persister)."""

    # Loopback, private (RFC 1918, fc00::/7), link-local (169.254/16: the cloud metadata service),
    # CGNAT and reserved targets are refused: a user-supplied URL must not reach the cluster's insides.
    # Tests and single-machine setups that call back into localhost turn this on.
    allow_private_targets: bool = False
    # Ports a target may name; 80/443 and the common alternates. Empty allows any port.
    allowed_ports: tuple[int, ...] = (80, 443, 8080, 8443)


class MemorySettings(_Group):
    # Blocks under this many MiB come from the heap and freed ones are kept for reuse (shared/allocator.py);
    # 0 keeps the C library's own policy. 32 holds every buffer of a 1024x1024 job (12 MiB at most) and is
    # the most every glibc accepts. The price is memory kept between jobs: about 32 MiB per image-pool
    # thread (1,067 against 554 MiB idle after the work at 16 threads; BENCHMARKS.md, bench.allocator).
    reuse_below_mib: int = Field(default=MAX_REUSE_BELOW_MIB, ge=0, le=MAX_REUSE_BELOW_MIB)


class TelemetrySettings(_Group):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    # inference, persister and stats serve /metrics, /healthz and /readyz here (ingest: on its HTTP port).
    metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no telemetry server
    # Loopback by default; a pod sets 0.0.0.0 so Prometheus and the kubelet's probes reach it.
    metrics_host: str = "127.0.0.1"
    # Each dependency (PostgreSQL, S3, the broker) must answer a readiness check within this.
    ready_timeout_s: float = Field(default=2.0, gt=0)
    # /healthz fails when a consume loop has neither polled nor finished a batch for this long (the
    # consumer's max poll interval, past which the group evicts it anyway).
    wedged_after_s: float = Field(default=600.0, gt=0)


class BaseServiceSettings(BaseSettings):
    """What every service needs; subclasses add one group of their own options."""

    model_config = SettingsConfigDict(env_prefix="RMBG_", env_nested_delimiter="__", frozen=True, extra="ignore")

    environment: Literal["dev", "test", "staging", "production"] = "dev"
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    s3: S3Settings = S3Settings()
    auth: AuthSettings = AuthSettings()
    images: ImageLimits = ImageLimits()
    outbound: OutboundSettings = OutboundSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    memory: MemorySettings = MemorySettings()
    # The model catalogue's served set and default (shared/models.py): RMBG_MODELS__SERVED, __DEFAULT.
    models: ModelSettings = ModelSettings()

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> BaseServiceSettings:
        if self.environment in ("dev", "test"):
            return self
        unsafe = []
        if self.s3.access_key == DEV_S3_ACCESS_KEY:
            unsafe.append("RMBG_S3__ACCESS_KEY")
        if self.s3.secret_key.get_secret_value() == DEV_S3_SECRET_KEY:
            unsafe.append("RMBG_S3__SECRET_KEY")
        if self.auth.key_pepper.get_secret_value() == DEV_KEY_PEPPER:
            unsafe.append("RMBG_AUTH__KEY_PEPPER")
        if DEV_ENCRYPTION_KEY in self.auth.encryption_keys.get_secret_value():
            unsafe.append("RMBG_AUTH__ENCRYPTION_KEYS")
        # A DSN without a password only works with trust auth, which no shared database should allow.
        if not urlsplit(self.postgres.dsn.get_secret_value()).password:
            unsafe.append("RMBG_POSTGRES__DSN (no password)")
        if unsafe:
            raise ConfigError(f"environment={self.environment} refuses development defaults: set {', '.join(unsafe)}")
        return self
