"""A job as its owner sees it: looked up for the caller only, with the URLs of its stored objects."""

from __future__ import annotations

import posixpath
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from services.ingest.errors import not_found
from services.ingest.resources import IngestResources
from shared.auth import Principal
from shared.ids import uuid7_time
from shared.views import job_view


def parse_job_id(raw: str) -> uuid.UUID:
    try:
        job_id = uuid.UUID(raw)
        uuid7_time(job_id)
    except ValueError:
        raise not_found(f"job {raw}") from None
    return job_id


async def owned_job(res: IngestResources, principal: Principal, raw_id: str, *, fresh: bool = False) -> dict[str, Any]:
    """The job's view when it exists and belongs to the caller; 404 otherwise (the same answer for both).

    ``fresh`` reads PostgreSQL even when Redis holds the job, and writes what it read through (never
    lowering a cached state): for a caller that knows the cached view is behind."""
    job_id = parse_job_id(raw_id)
    cached = None if fresh else await res.cache.get_job(str(job_id))
    if cached is not None:
        if cached.get("user_id") != principal.user_id:
            raise not_found(f"job {raw_id}")
        return cached
    async with res.db.pool.acquire() as conn:
        record = await res.db.jobs.get_job(conn, job_id=job_id)
    if record is None or record.user_id != principal.user_id:
        raise not_found(f"job {raw_id}")
    view = job_view(record)
    await (res.cache.put_job(view) if fresh else res.cache.fill_job(view))
    return view


class ResultKind(StrEnum):
    ORIGINAL = "original"
    MASK = "mask"
    CUTOUT = "cutout"


# Which column of the job's view holds each kind's object key.
KEY_FIELD = {ResultKind.ORIGINAL: "original_path", ResultKind.MASK: "mask_path", ResultKind.CUTOUT: "processed_path"}


def download_name(job: dict[str, Any], kind: ResultKind, key: str) -> str:
    return f"{job['job_id']}-{kind.value}{posixpath.splitext(key)[1]}"


async def result_urls(res: IngestResources, job: dict[str, Any]) -> dict[str, str | None]:
    """Where the caller can fetch each of the job's objects (None until it exists).

    Presigned for inline display (an <img> can use them), or the API's own paths in stream mode.
    Computed per request and never cached with the job: they expire.
    """
    options = res.settings.ingest
    urls: dict[str, str | None] = {}
    for kind, field in KEY_FIELD.items():
        key = job.get(field)
        if not key:
            urls[kind.value] = None
        elif options.result_delivery == "stream":
            urls[kind.value] = f"/v1/jobs/{job['job_id']}/{kind.value}"
        else:
            urls[kind.value] = await res.store.presigned_get(key, expires_s=options.result_url_ttl_s)
    if options.result_delivery == "redirect":
        expires = datetime.now(UTC) + timedelta(seconds=options.result_url_ttl_s)
        urls["expires_at"] = expires.isoformat(timespec="seconds")
    return urls


async def job_detail(res: IngestResources, job: dict[str, Any]) -> dict[str, Any]:
    """The job's view with its result URLs: what GET /v1/jobs/{id}, the list and the event stream show."""
    return {**job, "urls": await result_urls(res, job)}


