"""Ingest settings: ``RMBG_INGEST__*`` plus the shared connection groups (``RMBG_POSTGRES__DSN``...)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.config import BaseServiceSettings
from shared.exceptions import ConfigError
from shared.models import ModelSettings


class IngestOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Single-model shorthand kept for existing setups: RMBG_INGEST__MODEL=x means RMBG_MODELS__SERVED=x and
    # RMBG_MODELS__DEFAULT=x when neither of those is set. The served set and default live in
    # RMBG_MODELS__* (shared/models.py); a job names its model or gets the default.
    model: str | None = None
    group_id: str = "rmbg-ingest"
    # Upload events handled at once (each fetches, validates and stores one image).
    concurrency: int = Field(default=8, ge=1, le=256)
    # Buckets upload events may name besides the service's own: the service's keys may reach more
    # buckets than upstream systems should be able to make it read.
    upload_buckets: tuple[str, ...] = ()
    # Upload events stamped further ahead than this are refused: clocks drift, but not by days.
    max_clock_skew_s: int = Field(default=300, ge=0)
    # ...and those stamped further back than this (30 days): a backlog replayed after an outage is days
    # old, never months. Older is a broken clock or an unset one (Go's zero time, year 1, made a job of
    # year 8920 at the top of every newest-first list), and the job would land in a month retention may
    # already have removed. Refused events are dead-lettered with the reason.
    max_event_age_s: int = Field(default=30 * 86_400, ge=60)
    # Backpressure (docs/failures.md): new work is refused with 503 + Retry-After, and the upload consumer
    # backs off, while the unfinished jobs have waited longer than max_queue_wait_s or more than
    # max_backlog_jobs are unfinished. 300 s is what a catalogue upload may reasonably wait; 2,000 jobs is
    # about 7 minutes of work at the 4.4 jobs/s measured on 2 CPU cores (issue figures, BENCHMARKS.md).
    max_queue_wait_s: float = Field(default=300.0, gt=0)
    # The wait judged is that of the 20th longest-waiting unfinished job, not the oldest: a few stuck jobs
    # (lost ones, which the sweeper re-queues) must not close intake for everybody.
    backlog_wait_rank: int = Field(default=20, ge=1)
    max_backlog_jobs: int = Field(default=2000, ge=1)
    # The backlog is read from PostgreSQL at most this often (one index scan of the unfinished jobs).
    backlog_check_interval_s: float = Field(default=1.0, ge=0)
    # Each readiness check (PostgreSQL, object store) answers within this or counts as down.
    ready_timeout_s: float = Field(default=2.0, gt=0)
    # Results: "redirect" answers GET /v1/jobs/{id}/{kind} with 307 to a presigned URL (clients download
    # from the object store directly; the API moves no bytes); "stream" relays the bytes through the API,
    # for stores clients cannot reach. 15 minutes outlives a page view and a slow download, and is short
    # enough that a leaked URL is soon useless.
    result_delivery: Literal["redirect", "stream"] = "redirect"
    result_url_ttl_s: int = Field(default=900, ge=1, le=7 * 24 * 3600)  # SigV4 allows at most 7 days
    # Submitting by URL: the fetch is capped by RMBG_IMAGES__MAX_BYTES and by this time.
    fetch_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Per-key limits (services/ingest/limits.py); a key may carry its own (`rmbg keys create --rate`).
    # 20 requests/s with bursts of 40 lets a client poll a few hundred jobs and upload at the pace one node
    # processes (4.4 jobs/s measured on 2 cores, BENCHMARKS.md); the daily quota is a day of one node.
    # Idempotency keys are kept this long (clients retry within minutes; Stripe keeps them 24 h), then
    # pruned hourly by every ingest replica (a DELETE of expired rows; repeating it is harmless).
    idempotency_ttl_s: int = Field(default=86_400, ge=60)
    rate_limit_per_s: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    daily_job_quota: int = Field(default=400_000, ge=0)
    # GET /v1/admin/stats/users serves the stats service's quartile snapshot (refreshed every 60 s) while it
    # is at most this old; older (the stats service stopped), it computes the bounds live (4.5-16 ms).
    quartiles_max_age_s: float = Field(default=300.0, gt=0)


class LiveOptions(BaseModel):
    """Live job status, ``GET /v1/jobs/{id}/events`` (services/ingest/live.py): ``RMBG_LIVE__*``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Open streams per ingest process. Each costs a connection, a task and a queue of a few events (a few
    # KiB); 10,000 stays far below the file descriptors and memory of one replica.
    max_subscribers: int = Field(default=10_000, ge=1)
    # Events a stream may leave unread before it is dropped. A job sends at most 4 (accepted, processing,
    # accepted again and its end, see services/persister/announce.py), plus repeats of a replay: 32 is
    # reached only by a stream that stopped reading.
    queue_events: int = Field(default=32, ge=1)
    # A comment line this often keeps proxies (nginx, load balancers: 60 s idle timeouts) from cutting it.
    keepalive_s: float = Field(default=15.0, gt=0)
    # No event for this long: the job is read once more, in case its event was missed; each further
    # quiet period doubles, up to max_quiet_s (a safety net, not polling).
    quiet_s: float = Field(default=30.0, gt=0)
    max_quiet_s: float = Field(default=300.0, gt=0)
    # A stream ends after this with the job's current state; the client reconnects. Bounds how long one
    # connection pins a replica (deploys, rebalancing of long-lived connections).
    max_stream_s: float = Field(default=3600.0, gt=0)
    # An open stream verifies its API key again this often (and before every read of the job), so a
    # revoked key's stream ends within it. Each check is one Redis read: 10,000 streams cost ~170/s.
    reauth_s: float = Field(default=60.0, gt=0)
    # A client that reads nothing for this long is cut off (its socket buffer is full).
    send_timeout_s: float = Field(default=30.0, gt=0)


class IngestSettings(BaseServiceSettings):
    ingest: IngestOptions = IngestOptions()
    live: LiveOptions = LiveOptions()

    @model_validator(mode="after")
    def _single_model_shorthand(self) -> IngestSettings:
        model = self.ingest.model
        if model is None:
            return self
        if {"served", "default"} & self.models.model_fields_set:
            served = self.models.resolve(model)
            if served != self.models.default:
                raise ConfigError(
                    f"RMBG_INGEST__MODEL={model} contradicts RMBG_MODELS__DEFAULT={self.models.default}: "
                    "set only the latter"
                )
            return self
        models = ModelSettings(served=(model,), extra=self.models.extra)
        object.__setattr__(self, "models", models)
        return self
