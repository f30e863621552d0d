"""Jobs: submit, list, read. Every query is scoped to the caller's user (services/ingest/auth.py)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from pydantic import BaseModel, ValidationError

from services.ingest.auth import CurrentUser, Resources
from services.ingest.errors import ERROR_RESPONSES, ApiError, ErrorResponse, json_object_param
from services.ingest.intake import Accepted, Idempotency, IdempotencyConflict
from services.ingest.jobviews import job_detail, owned_job
from shared.contracts import ProcessingParams, parse_tags
from shared.db.models import JobStatus
from shared.exceptions import ConfigError, ContractError, ImageRejected
from shared.outbound import check_url, fetch_bytes
from shared.views import job_view

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

# HTTP status for each reason an image is refused.
_REJECT_STATUS = {
    "too_large": 413,
    "unsupported_format": 415,
    "too_many_pixels": 422,
    "too_large_dimensions": 422,
    "corrupt": 422,
    "empty": 422,
}


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    status_url: str
    events_url: str
    # False when an Idempotency-Key named a job accepted before: this is that job, not a new one.
    created: bool = True


def _parse_tags(raw: str | None) -> list[str]:
    try:
        return parse_tags(raw.split(",")) if raw else []
    except ContractError as exc:
        raise ApiError(422, "invalid_tags", str(exc)) from None


def _parse_params(raw: str | None) -> ProcessingParams:
    if not raw:
        return ProcessingParams()
    try:
        return ProcessingParams.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(422, "invalid_params", f"invalid params: {problems}") from None


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": JobAccepted, "description": "an Idempotency-Key replay: the job the first request made"},
        413: {"model": ErrorResponse, "description": "the image exceeds the size limit"},
        415: {"model": ErrorResponse, "description": "not an image format this service reads"},
        429: {"model": ErrorResponse, "description": "rate limit or daily quota reached; see Retry-After"},
    },
)
async def submit_job(
    res: Resources,
    principal: CurrentUser,
    response: Response,
    image: Annotated[UploadFile | None, File(description="the image to cut out (or give image_url)")] = None,
    image_url: Annotated[str | None, Form(max_length=2048, description="http(s) URL to fetch the image from")] = None,
    tags: Annotated[str | None, Form(description="comma-separated tags")] = None,
    params: Annotated[str | None, Form(description='JSON, e.g. {"threshold": 0.5}')] = None,
    callback_url: Annotated[
        str | None, Form(max_length=2048, description="https URL to POST a signed webhook to when the job ends")
    ] = None,
    model: Annotated[
        str | None, Form(max_length=128, description="a served model's name (GET /v1/models); default: the default")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=255, description="retry-safe: same key, same job"),
    ] = None,
) -> JobAccepted:
    """Accept one image for background removal; 202 with the job id and where to follow it.

    Send the image as a file or give ``image_url`` (fetched by the service: http/https, public addresses
    only, capped in size and time). An ``Idempotency-Key`` makes retries safe: the same key with the same
    request answers 200 with the first job; with a different request, 422.
    """
    if (image is None) == (image_url is None):
        raise ApiError(422, "invalid_request", "send exactly one of: an image file, or image_url")
    model_name = _served_model(res, model)
    parsed_tags = _parse_tags(tags)
    parsed_params = _parse_params(params)
    policy = res.settings.outbound
    if callback_url is not None:
        check_url(callback_url, policy)
    options = res.settings.ingest
    default = res.settings.models.default_model
    max_bytes = res.settings.images.max_bytes
    data = await image.read(max_bytes + 1) if image is not None else None
    if data is not None and len(data) > max_bytes:
        raise ApiError(413, "too_large", f"image exceeds the limit of {max_bytes} bytes")
    idempotency = (
        Idempotency(
            key=idempotency_key,
            fingerprint=_fingerprint(
                data, image_url, parsed_tags, parsed_params, callback_url, None if model_name == default else model_name
            ),
        )
        if idempotency_key
        else None
    )
    if idempotency is not None:
        # Judged before fetching or validating anything: a retry costs one primary-key lookup.
        try:
            earlier = await res.intake.replay(user_id=principal.user_id, idempotency=idempotency)
        except IdempotencyConflict as exc:
            raise ApiError(422, "idempotency_key_reused", str(exc)) from None
        if earlier is not None:
            response.status_code = 200
            return _accepted(earlier)
    # After the replay, so a retry of an accepted job learns its id whatever the load or the quota (it
    # makes no new job), and before any fetch or validation. The body itself is already read: the
    # framework reads it before the handler runs (services/ingest/bodylimit.py caps it).
    await res.backpressure.check()
    await res.limits.check_quota(principal)
    if data is None:
        assert image_url is not None
        fetched = await fetch_bytes(
            res.outbound,
            check_url(image_url, policy),
            policy=policy,
            max_bytes=max_bytes,
            timeout_s=options.fetch_timeout_s,
        )
        data = fetched.data
    try:
        accepted = await res.intake.accept(
            data=data,
            user_id=principal.user_id,
            tags=parsed_tags,
            params=parsed_params,
            source="http",
            idempotency=idempotency,
            callback_url=callback_url,
            model=model_name,
        )
    except ImageRejected as exc:
        res.metrics.records.labels(topic="http", outcome=f"rejected_{exc.code}").inc()
        raise ApiError(_REJECT_STATUS.get(exc.code, 422), exc.code, exc.reason) from None
    except IdempotencyConflict as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from None
    res.metrics.records.labels(topic="http", outcome="accepted").inc()
    if accepted.created:
        await res.limits.count_job(principal)
    else:
        response.status_code = 200
    return _accepted(accepted)


def _served_model(res: Resources, model: str | None) -> str:
    """The stable name of the job's model; 422 model_not_served, listing the served ones, for any other.

    Refused here, before the upload is read, rather than queued for no pool to take: the served set is
    this deployment's settings (RMBG_MODELS__SERVED), the same ones its inference pools are started from."""
    models = res.settings.models
    if model is None or not model.strip():
        return models.default_model
    try:
        name = models.resolve(model.strip())
    except ConfigError:
        name = model.strip()
    if not models.is_served(name):
        raise ApiError(
            422,
            "model_not_served",
            f"model {model!r} is not served here; served: {', '.join(models.served)} (default {models.default})",
            details=[{"where": "model", "problem": "not served", "served": list(models.served)}],
        )
    return name


def _accepted(accepted: Accepted) -> JobAccepted:
    return JobAccepted(
        job_id=str(accepted.job_id),
        status=JobStatus(accepted.status),
        status_url=f"/v1/jobs/{accepted.job_id}",
        events_url=f"/v1/jobs/{accepted.job_id}/events",
        created=accepted.created,
    )


def _fingerprint(
    data: bytes | None,
    image_url: str | None,
    tags: list[str],
    params: ProcessingParams,
    callback_url: str | None,
    model: str | None = None,
) -> bytes:
    """What makes two submissions "the same request" for an Idempotency-Key: the image (its bytes, or
    the URL as given: a retry is judged before fetching), tags, params, callback and a model other than
    the default (None for the default, so keys stored before models could be named keep matching)."""
    digest = hashlib.sha256()
    image = hashlib.sha256(data).hexdigest() if data is not None else f"url:{image_url}"
    parts = [image, ",".join(sorted(tags)), params.digest(), callback_url or ""]
    if model is not None:
        parts.append(f"model:{model}")
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.digest()


@router.get("/v1/jobs")
async def list_jobs(
    res: Resources,
    principal: CurrentUser,
    status: JobStatus | None = None,
    tag: str | None = None,
    params: Annotated[str | None, Query(description="JSON containment filter")] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The caller's jobs, newest first; follow ``next_cursor`` for the next page."""
    contains = json_object_param(params, "params") if params else None
    try:
        async with res.db.pool.acquire() as conn:
            rows, next_cursor = await res.db.jobs.list_jobs(
                conn,
                user_id=principal.user_id,
                status=status,
                tag=tag,
                params=contains,
                created_from=created_from,
                created_to=created_to,
                cursor=cursor,
                limit=limit,
            )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return {"items": [await job_detail(res, job_view(r)) for r in rows], "next_cursor": next_cursor}


@router.get("/v1/jobs/recent")
async def recent_completed(
    res: Resources, principal: CurrentUser, limit: Annotated[int, Query(ge=1, le=50)] = 10
) -> dict[str, Any]:
    """The caller's most recently completed jobs (design query 1, cached per user in Redis)."""
    user_id = principal.user_id
    variant = f"completed:{limit}"
    version, cached = await res.cache.get_user_list(user_id, variant)
    if cached is not None:
        return {"items": [await job_detail(res, job) for job in cached]}
    async with res.db.pool.acquire() as conn:
        rows = await res.db.jobs.recent_completed(conn, user_id=user_id, limit=limit)
    items = [job_view(r) for r in rows]
    await res.cache.put_user_list(user_id, version, variant, items)
    return {"items": [await job_detail(res, job) for job in items]}


@router.get("/v1/jobs/{job_id}")
async def get_job(res: Resources, principal: CurrentUser, job_id: str) -> dict[str, Any]:
    """One of the caller's jobs, with short-lived URLs of its original, mask and cut-out."""
    return await job_detail(res, await owned_job(res, principal, job_id))
