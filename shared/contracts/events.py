"""Event contracts (schema version 1).

Every message carries ``schema_version``; a consumer refuses versions it does not know and sends them to
the dead-letter topic rather than guessing. Image bytes never travel here (claim-check): messages carry
object keys, except a result's mask when its PNG is small (``ResultEvent.mask_png``, bounded below).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

SCHEMA_VERSION = 1

# A mask PNG rides inside the result message only under this size; larger ones go to object storage
# first and travel by key. 512 KiB leaves room under Kafka's 1 MiB default for base64 (x4/3) and JSON.
MAX_INLINE_MASK_BYTES = 512 * 1024

UserId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@:-]+$")]
TagName = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True, to_lower=True)]
ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    schema_version: Literal[1] = 1


class CutoutFormat(StrEnum):
    PNG = "png"
    WEBP_LOSSLESS = "webp_lossless"
    WEBP = "webp"


class ProcessingParams(BaseModel):
    """What a caller may ask of one job. Stored as the job's ``params`` JSONB."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # None keeps the model's soft matte; a value binarises it (alpha = 255 where matte >= threshold).
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # None takes the service default (see README: chosen by measurement).
    cutout_format: CutoutFormat | None = None
    webp_quality: int | None = Field(default=None, ge=1, le=100)

    def canonical(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)

    def digest(self) -> str:
        """Short stable hash of the parameters that change the output (part of result object keys)."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class UploadEvent(_Message):
    """Published by an upstream system whose image already sits in object storage."""

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    user_id: UserId
    bucket: Annotated[str, StringConstraints(min_length=3, max_length=63)] | None = None
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    tags: list[TagName] = Field(default_factory=list, max_length=32)
    params: ProcessingParams = ProcessingParams()
    occurred_at: AwareDatetime


class JobRequested(_Message):
    """One image to segment; published by ingest (and by the stuck-job sweeper on retry)."""

    job_id: uuid.UUID
    created_at: AwareDatetime
    user_id: UserId
    original_key: ObjectKey
    content_sha256: Sha256Hex
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    params: ProcessingParams
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    attempt: int = Field(default=1, ge=1)


class ResultKind(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


class ResultEvent(_Message):
    """Inference's word on one job: it started, it produced a mask, or it failed with a reason."""

    kind: ResultKind
    job_id: uuid.UUID
    created_at: AwareDatetime
    attempt: int = Field(default=1, ge=1)
    occurred_at: AwareDatetime
    model_name: str | None = None
    model_revision: str | None = None
    mask_png: bytes | None = Field(default=None, max_length=MAX_INLINE_MASK_BYTES)
    mask_key: ObjectKey | None = None
    inference_ms: int | None = Field(default=None, ge=0)
    reused: bool = False
    error: Annotated[str, StringConstraints(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ResultEvent:
        if self.kind is ResultKind.COMPLETED:
            if (self.mask_png is None) == (self.mask_key is None):
                raise ValueError("a completed result carries exactly one of mask_png or mask_key")
            if not self.model_name:
                raise ValueError("a completed result names its model")
        if self.kind is ResultKind.FAILED and not self.error:
            raise ValueError("a failed result carries its error")
        return self


class JobEventKind(StrEnum):
    ACCEPTED = "accepted"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class JobEvent(_Message):
    """A job's state transition, published after PostgreSQL holds it. Feeds stats and dashboards."""

    job_id: uuid.UUID
    created_at: AwareDatetime
    kind: JobEventKind
    occurred_at: AwareDatetime
    user_id: UserId
    processing_time_ms: int | None = Field(default=None, ge=0)
    model_name: str | None = None
    error: Annotated[str, StringConstraints(max_length=2000)] | None = None
    # On `accepted` only: what the job asked for, so stats count jobs by parameters per day.
    params: ProcessingParams | None = None

    @property
    def event_id(self) -> str:
        # A job enters each state once, so (job, state) identifies the transition however often it is sent.
        return f"{self.job_id}:{self.kind.value}"


class DeadLetter(_Message):
    """A record no service could process, kept with the reason for an operator to inspect or replay."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    reason: Annotated[str, StringConstraints(max_length=4000)]
    service: str
    failed_at: AwareDatetime
    # The first bytes of the offending record (bounded so the dead letter itself stays small).
    payload: bytes = Field(max_length=256 * 1024)
