"""Event contracts (schema version 1).

Every message carries ``schema_version``; a consumer refuses versions it does not know and sends them to
the dead-letter topic rather than guessing. Image bytes never travel here (claim-check): messages carry
object keys, except a result's mask when its PNG is small (``ResultEvent.mask_png``, bounded below).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.exceptions import ContractError

SCHEMA_VERSION = 1

# A mask PNG rides inside the result message only under this size; larger ones go to object storage
# first and travel by key. 512 KiB leaves room under Kafka's 1 MiB default for base64 (x4/3) and JSON.
MAX_INLINE_MASK_BYTES = 512 * 1024

# Free text fields refuse control characters: PostgreSQL refuses NUL in text, and the others only ever
# arrive by mistake or as an attack on logs and terminals.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_TAGS = 32
UserId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@:-]+$")]
TagName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True, to_lower=True, pattern=_PRINTABLE)
]
ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=_PRINTABLE)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


# A validator built once, like the models below; it holds no runtime state.
_TAG_LIST: TypeAdapter[list[TagName]] = TypeAdapter(list[TagName])


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
    # Kept to thousandths, the precision the mask's key names it by (ObjectKeys.threshold_tag, "t0900"):
    # unrounded, 0.8996 and 0.9004 shared that key but cut the matte at 229 and 230, so the second job
    # reused the first one's mask (225 of the 1,001 tags covered more than one cut).
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # None takes the service default (see README: chosen by measurement).
    cutout_format: CutoutFormat | None = None
    webp_quality: int | None = Field(default=None, ge=1, le=100)

    @field_validator("threshold")
    @classmethod
    def _to_thousandths(cls, value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    def canonical(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)

    def digest(self) -> str:
        """Short stable hash of the parameters that change the output (part of result object keys)."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_tags(raw: Iterable[str]) -> list[str]:
    """Tags as every entry point stores them (stripped, lower-case, unique, sorted); ContractError if invalid."""
    given = [t for t in raw if t.strip()]
    if len(given) > MAX_TAGS:
        raise ContractError(f"at most {MAX_TAGS} tags, got {len(given)}")
    try:
        tags = _TAG_LIST.validate_python(given)
    except ValidationError as exc:
        problems = "; ".join(f"tag {e['loc'][0]}: {_plain(e)}" for e in exc.errors()[:5])
        raise ContractError(f"invalid tags: {problems}") from None
    return sorted(set(tags))


def _plain(error: Any) -> str:
    return "contains a control character" if error["type"] == "string_pattern_mismatch" else str(error["msg"])


class UploadEvent(_Message):
    """Published by an upstream system whose image already sits in object storage."""

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
    user_id: UserId
    # S3's bucket naming rule: 3-63 lower-case letters, digits, dots and hyphens.
    bucket: Annotated[str, StringConstraints(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+$")] | None = (
        None
    )
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=_PRINTABLE)]
    tags: list[TagName] = Field(default_factory=list, max_length=MAX_TAGS)
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


def dead_letter_payload_room(spare_bytes: int) -> int:
    """The most record bytes a dead letter can carry in ``spare_bytes`` of its serialized size: JSON carries
    bytes as base64, 4 characters for every 3 bytes (the last group padded to 4)."""
    return max(0, spare_bytes // 4 * 3)


# A dead letter keeps the offending record whole up to this size, so `rmbg dlq replay` can send it back.
# Sized from the default message limit (KafkaSettings.max_message_bytes, 1,000,000) less 16 KiB for the
# letter's other fields (a reason of 4,000 ASCII characters is 4 KB): 737,712 bytes, 983,616 as base64. The
# largest record a topic takes at that limit with a valid message, a result with its inline mask
# (MAX_INLINE_MASK_BYTES, about 700 KB as JSON), is kept whole. DeadLetters.send measures the letter and
# keeps less where the topic's limit is lower or the other fields are longer, so a letter always fits.
MAX_DEAD_LETTER_PAYLOAD = dead_letter_payload_room(1_000_000 - 16 * 1024)
# A record's key is kept up to this many characters (the pipeline's keys are job and event ids of at most
# 128): a key of any size must not make the letter too large, and 256 characters are at most 1.5 KB of JSON.
MAX_DEAD_LETTER_KEY = 256
# A letter that cannot hold its record (the topic refuses it) keeps its position and the reason up to this
# many characters: at most 4 KB in UTF-8, so with the key and the rest it fits the smallest message limit
# KafkaSettings allows (10,000 bytes).
MAX_MINIMAL_DEAD_LETTER_REASON = 1000


class DeadLetter(_Message):
    """A record no service could process, kept with the reason for an operator to inspect or replay."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    reason: Annotated[str, StringConstraints(max_length=4000)]
    # permanent (can never succeed as it is) or unknown (an unclassified error, given up after retries).
    failure_class: Literal["permanent", "unknown"] = "permanent"
    service: str
    failed_at: AwareDatetime
    # The offending record, whole unless it did not fit the letter (then its first bytes, or none).
    payload: bytes = Field(max_length=MAX_DEAD_LETTER_PAYLOAD)
    payload_truncated: bool = False
