"""Typed, frozen rows returned by the repositories (never raw asyncpg records)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, NamedTuple
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from shared.contracts.events import CutoutFormat
from shared.storage.keys import ObjectKeys


class JobStatus(StrEnum):
    """A job's status, the one vocabulary for it: forward only, pending → processing → completed | failed
    (the trigger of migration 0001 enforces it)."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


JobSource = Literal["http", "upload"]
StatKind = Literal["accepted", "completed", "failed"]

TERMINAL_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})
# Order for the cache's "never replace a later state with an earlier one" (shared/cache.py).
STATUS_RANK: dict[JobStatus, int] = {
    JobStatus.PENDING: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.COMPLETED: 2,
    JobStatus.FAILED: 2,
}


class _Row(BaseModel):
    # extra="ignore": a column added by a later migration must not break readers of this version.
    model_config = ConfigDict(frozen=True, extra="ignore")


class JobRecord(_Row):
    """One row of image_process_jobs, with its tag names and its object keys.

    The row stores a key only where it is not the derived one (migration 0014): ``from_row`` fills the
    three paths in with ObjectKeys from the columns that determine them."""

    job_id: UUID
    created_at: datetime
    user_id: str
    original_path: str
    mask_path: str | None
    processed_path: str | None
    original_ext: str | None = None
    cutout_format: CutoutFormat | None = None  # set once completed: the format the cut-out was made in
    status: JobStatus
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    processing_time_ms: int | None
    image_width: int | None
    image_height: int | None
    file_size_kb: int | None
    params: dict[str, Any]
    params_hash: str
    error_message: str | None
    content_sha256: str  # lowercase hex of the 32 stored bytes
    model_name: str
    model_revision: str | None
    original_bytes: int
    mask_bytes: int | None
    processed_bytes: int | None
    source: JobSource
    attempts: int
    reused_result: bool
    # Where the job's latest request sits in the jobs topic, once the broker acknowledged it.
    queue_partition: int | None = None
    queue_offset: int | None = None
    tags: tuple[str, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        data = dict(row)
        sha = data["content_sha256"] = bytes(data["content_sha256"]).hex()
        if data.get("original_path") is None:
            data["original_path"] = ObjectKeys.original(sha, data["original_ext"])
        fmt = data.get("cutout_format")
        if fmt is not None:
            model_name, model_revision = data["model_name"], data["model_revision"]
            if data.get("mask_path") is None:
                data["mask_path"] = ObjectKeys.job_mask(
                    sha, model_name=model_name, model_revision=model_revision, threshold=data["params"].get("threshold")
                )
            if data.get("processed_path") is None:
                data["processed_path"] = ObjectKeys.cutout(
                    sha,
                    model_name=model_name,
                    model_revision=model_revision,
                    params_hash=data["params_hash"],
                    fmt=CutoutFormat(fmt),
                )
        data["tags"] = tuple(data.get("tags") or ())
        return cls.model_validate(data)


class DailyStats(_Row):
    """One UTC day of processing_stats (or the same figures computed from the jobs table)."""

    stat_date: date
    total_jobs: int
    completed_jobs: int
    failed_jobs: int
    sum_processing_time_ms: int
    avg_processing_time_ms: Decimal | None
    error_rate: Decimal | None  # percent of finished jobs that failed

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DailyStats:
        return cls.model_validate(dict(row))


class TagMatch(_Row):
    tag_id: int
    name: str
    similarity: float


class UserRecord(_Row):
    user_id: str
    username: str
    # Ciphertext only (shared/auth/crypto.py); decrypt with EmailCipher where a person asked to see it.
    email_encrypted: bytes | None = None
    created_at: datetime
    last_login: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> UserRecord:
        return cls.model_validate(dict(row))


class ApiKeyRecord(_Row):
    """One row of api_keys (migration 0008): the key's hash, never the key."""

    key_id: str
    user_id: str
    key_hash: bytes
    is_admin: bool
    name: str | None
    rate_per_s: float | None = None
    daily_quota: int | None = None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ApiKeyRecord:
        return cls.model_validate(dict(row))


class IdempotentJob(NamedTuple):
    """The job an Idempotency-Key produced first, with the fingerprint of the request that made it."""

    job_id: UUID
    fingerprint: bytes
    created_at: datetime


class UserSummary(_Row):
    """One user's jobs by status since a time (``GET /v1/stats``)."""

    total_jobs: int
    pending_jobs: int
    processing_jobs: int
    completed_jobs: int
    failed_jobs: int
    avg_processing_time_ms: Decimal | None


class UserJobCount(NamedTuple):
    """Design query 6: a user's job count and its quartile (1 = fewest jobs, 4 = most)."""

    user_id: str
    job_count: int
    quartile: int


# Rows retention and fsck read by the thousand (a batch of 5,000, a shard of the whole table): NamedTuples,
# built from columns the SQL already typed, with no validation per row.


class ContentObjects(NamedTuple):
    """Object keys of removed jobs with one content: retention deletes those no remaining job references."""

    content_sha256: bytes
    paths: tuple[str, ...]  # original, mask, cut-out: what the jobs named (an upstream s3:// original too)


class RetiredBatch(NamedTuple):
    """One batch of a retired month, already checked against the remaining jobs (retention.sql
    retired_unreferenced): the object keys to delete, and how many of its keys stay because a remaining
    job has the same content."""

    last_sha: bytes | None  # the batch's highest content hash (the next batch starts above it); None: done
    kept: int
    doomed: tuple[str, ...]  # distinct; upstream s3:// originals are never among them


class ShardJob(NamedTuple):
    """One job as fsck checks it against the objects of its content shard (retention.sql jobs_in_shard)."""

    job_id: UUID
    created_at: datetime
    status: JobStatus
    content_sha256: bytes
    original_path: str
    mask_path: str | None
    processed_path: str | None
    params: dict[str, Any]
    params_hash: str


WebhookState = Literal["pending", "due", "delivered", "gave_up"]
WebhookEvent = Literal["job.completed", "job.failed"]


class WebhookRecord(_Row):
    """One row of webhooks (migration 0009): a job's callback and where its delivery stands."""

    job_id: UUID
    created_at: datetime
    user_id: str
    url: str
    state: WebhookState
    event_type: WebhookEvent | None
    registered_at: datetime
    due_at: datetime | None
    next_attempt_at: datetime | None
    lease_token: UUID | None
    attempts: int
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WebhookRecord:
        return cls.model_validate(dict(row))


class WebhookAttempt(_Row):
    """One delivery attempt: status_code is None when no HTTP answer came (refused, timeout, reset)."""

    job_id: UUID
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WebhookAttempt:
        return cls.model_validate(dict(row))


class WebhookSecretRecord(_Row):
    """A user's signing secret, as ciphertext (decrypt with shared.auth.SecretCipher)."""

    user_id: str
    secret_encrypted: bytes
    previous_encrypted: bytes | None
    previous_until: datetime | None
    created_at: datetime
    rotated_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WebhookSecretRecord:
        return cls.model_validate(dict(row))
