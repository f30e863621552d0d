"""What is built from a job's row, each in one place: its public view (the API and the Redis cache), its
request on the jobs topic, and its transition events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.contracts import JobEvent, JobEventKind, JobRequested, ProcessingParams
from shared.db.models import JobRecord, JobStatus


class JobView(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    user_id: str
    status: str
    created_at: datetime
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    processing_time_ms: int | None = None
    image_width: int | None = None
    image_height: int | None = None
    file_size_kb: int | None = None
    original_path: str
    mask_path: str | None = None
    processed_path: str | None = None
    original_bytes: int | None = None
    mask_bytes: int | None = None
    processed_bytes: int | None = None
    content_sha256: str
    model_name: str
    model_revision: str | None = None
    params: dict[str, Any]
    tags: list[str] = []
    attempts: int = 1
    reused_result: bool = False
    error_message: str | None = None


def job_view(record: JobRecord) -> dict[str, Any]:
    data = {name: getattr(record, name, None) for name in JobView.model_fields}
    data["job_id"] = str(record.job_id)
    data["tags"] = list(getattr(record, "tags", None) or [])
    return JobView.model_validate(data).model_dump(mode="json")


def job_request(record: JobRecord, *, attempt: int | None = None) -> JobRequested:
    """The jobs-topic request for ``record`` (``attempt`` for a re-queue; the row's count otherwise)."""
    return JobRequested(
        job_id=record.job_id,
        created_at=record.created_at,
        user_id=record.user_id,
        original_key=record.original_path,
        content_sha256=record.content_sha256,
        # A queued job always has its sides (intake measured them); 1 only guards a hand-made row.
        width=record.image_width or 1,
        height=record.image_height or 1,
        params=ProcessingParams.model_validate(record.params),
        model=record.model_name,
        attempt=attempt or record.attempts,
    )


def job_event(record: JobRecord, kind: JobEventKind | None = None) -> JobEvent:
    """The transition into the row's status (pending is ``accepted``), or into ``kind`` when the caller
    re-announces an earlier one (the sweeper and intake's rejects announce ``accepted`` too)."""
    kind = kind or (JobEventKind.ACCEPTED if record.status == JobStatus.PENDING else JobEventKind(record.status))
    return JobEvent(
        job_id=record.job_id,
        created_at=record.created_at,
        kind=kind,
        occurred_at=datetime.now(UTC),
        user_id=record.user_id,
        processing_time_ms=record.processing_time_ms if kind is JobEventKind.COMPLETED else None,
        model_name=record.model_name,
        error=(record.error_message or "")[:2000] or None if kind is JobEventKind.FAILED else None,
        # On `accepted` only: what the job asked for, so stats count jobs by parameters per day.
        params=ProcessingParams.model_validate(record.params) if kind is JobEventKind.ACCEPTED else None,
    )
