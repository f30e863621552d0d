"""The public shape of a job: what the API returns and what the Redis cache holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.db.models import JobRecord


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
