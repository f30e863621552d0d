"""HTTP API of the ingest service, built by ``create_app`` (never at import time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ValidationError

from services.ingest.resources import IngestResources, open_ingest
from services.ingest.settings import IngestSettings
from services.ingest.uploads import run_upload_consumer
from shared.contracts import ProcessingParams, parse_tags
from shared.db.models import JobStatus
from shared.exceptions import ContractError, ImageRejected, Overloaded, RmbgError
from shared.failures import FailureClass, classify, describe
from shared.ids import uuid7_time
from shared.telemetry import PipelineMetrics
from shared.views import job_view

log = logging.getLogger(__name__)

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
    status: str
    status_url: str


router = APIRouter()


def _resources(request: Request) -> IngestResources:
    res: IngestResources = request.app.state.resources
    return res


def _parse_tags(raw: str | None) -> list[str]:
    try:
        return parse_tags(raw.split(",")) if raw else []
    except ContractError as exc:
        raise HTTPException(422, str(exc)) from None


def _parse_params(raw: str | None) -> ProcessingParams:
    if not raw:
        return ProcessingParams()
    try:
        return ProcessingParams.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()[:5])
        raise HTTPException(422, f"invalid params: {problems}") from None


def _job_id(raw: str) -> uuid.UUID:
    try:
        job_id = uuid.UUID(raw)
        uuid7_time(job_id)
    except ValueError:
        raise HTTPException(404, f"no job {raw}") from None
    return job_id


# Seconds a client is told to wait when a dependency is down: long enough not to hammer a restarting
# database, short enough that a blip costs little.
_RETRY_AFTER_S = 5


async def _classified(_: Request, exc: Exception) -> JSONResponse:
    """Errors that escaped a handler, answered by the failure taxonomy (docs/failures.md).

    Transient (a dependency down): 503 with Retry-After; nothing was accepted, so the same upload may be
    retried safely. Permanent (the request itself can never succeed, e.g. a value PostgreSQL refuses):
    422 with the reason. Anything else is a bug: 500, logged with its traceback.
    """
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse({"detail": exc.reason}, status_code=503, headers=headers)
    cls = classify(exc)
    if cls is FailureClass.TRANSIENT:
        log.error("dependency unavailable: %s", describe(exc, limit=300))
        return JSONResponse(
            {"detail": "a dependency is unavailable, retry later"},
            status_code=503,
            headers={"Retry-After": str(_RETRY_AFTER_S)},
        )
    if cls is FailureClass.PERMANENT:
        return JSONResponse({"detail": f"invalid request: {describe(exc, limit=500)}"}, status_code=422)
    log.exception("unexpected error", exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted)
async def submit_job(
    request: Request,
    image: Annotated[UploadFile, File(description="the image to cut out")],
    user_id: Annotated[str, Form(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@:-]+$")],
    tags: Annotated[str | None, Form(description="comma-separated tags")] = None,
    params: Annotated[str | None, Form(description='JSON, e.g. {"threshold": 0.5}')] = None,
) -> JobAccepted:
    res = _resources(request)
    await res.backpressure.check()  # before reading the upload: refusing costs the client nothing
    limit = res.settings.ingest.max_image_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"image exceeds the limit of {limit} bytes")
    parsed_tags = _parse_tags(tags)
    parsed_params = _parse_params(params)
    try:
        accepted = await res.intake.accept(
            data=data, user_id=user_id, tags=parsed_tags, params=parsed_params, source="http"
        )
    except ImageRejected as exc:
        res.metrics.records.labels(topic="http", outcome=f"rejected_{exc.code}").inc()
        raise HTTPException(_REJECT_STATUS.get(exc.code, 422), exc.reason) from None
    res.metrics.records.labels(topic="http", outcome="accepted").inc()
    return JobAccepted(job_id=str(accepted.job_id), status=accepted.status, status_url=f"/v1/jobs/{accepted.job_id}")


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    res = _resources(request)
    jid = _job_id(job_id)
    cached = await res.cache.get_job(str(jid))
    if cached is not None:
        return cached
    async with res.db.pool.acquire() as conn:
        record = await res.db.jobs.get_job(conn, job_id=jid)
    if record is None:
        raise HTTPException(404, f"no job {job_id}")
    view = job_view(record)
    await res.cache.fill_job(view)
    return view


@router.get("/v1/jobs")
async def list_jobs(
    request: Request,
    user_id: str | None = None,
    status: JobStatus | None = None,
    tag: str | None = None,
    params: Annotated[str | None, Query(description="JSON containment filter")] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    res = _resources(request)
    contains: dict[str, Any] | None = None
    if params:
        try:
            contains = json.loads(params)
        except json.JSONDecodeError:
            raise HTTPException(422, "params must be a JSON object") from None
        if not isinstance(contains, dict):
            raise HTTPException(422, "params must be a JSON object")
    try:
        async with res.db.pool.acquire() as conn:
            rows, next_cursor = await res.db.jobs.list_jobs(
                conn,
                user_id=user_id,
                status=status,
                tag=tag,
                params=contains,
                created_from=created_from,
                created_to=created_to,
                cursor=cursor,
                limit=limit,
            )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"items": [job_view(r) for r in rows], "next_cursor": next_cursor}


@router.get("/v1/users/{user_id}/recent")
async def recent_completed(
    request: Request, user_id: str, limit: Annotated[int, Query(ge=1, le=50)] = 10
) -> dict[str, Any]:
    res = _resources(request)
    variant = f"completed:{limit}"
    version, cached = await res.cache.get_user_list(user_id, variant)
    if cached is not None:
        return {"items": cached}
    async with res.db.pool.acquire() as conn:
        rows = await res.db.jobs.recent_completed(conn, user_id=user_id, limit=limit)
    items = [job_view(r) for r in rows]
    await res.cache.put_user_list(user_id, version, variant, items)
    return {"items": items}


@router.get("/v1/stats/daily")
async def daily_stats(request: Request, days: Annotated[int, Query(ge=1, le=366)] = 30) -> dict[str, Any]:
    res = _resources(request)
    async with res.db.pool.acquire() as conn:
        rows = await res.db.stats.daily_totals(conn, days=days)
    return {"days": [r.model_dump(mode="json") for r in rows]}


@router.get("/v1/stats/params")
async def params_count(
    request: Request,
    contains: Annotated[str, Query(description='JSON object, e.g. {"threshold": 0.9}')],
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> dict[str, Any]:
    """Jobs accepted in the last ``days`` days whose params contain ``contains`` (from per-day counts)."""
    res = _resources(request)
    try:
        wanted = json.loads(contains)
    except json.JSONDecodeError:
        raise HTTPException(422, "contains must be a JSON object") from None
    if not isinstance(wanted, dict):
        raise HTTPException(422, "contains must be a JSON object")
    today = datetime.now(UTC).date()
    date_from = today - timedelta(days=days - 1)
    async with res.db.pool.acquire() as conn:
        jobs = await res.db.stats.params_job_count(conn, contains=wanted, date_from=date_from, date_to=today)
    return {"contains": wanted, "from": date_from.isoformat(), "to": today.isoformat(), "jobs": jobs}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when PostgreSQL and the object store answer, each within the readiness timeout."""
    res = _resources(request)
    timeout = res.settings.ingest.ready_timeout_s
    checks = {
        "postgres": await _check(res.db.ping(), timeout),
        "s3": await _check(res.store.ensure_bucket(), timeout),
    }
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


async def _check(probe: Awaitable[None], timeout_s: float) -> str:
    try:
        await asyncio.wait_for(probe, timeout_s)
    except TimeoutError:
        return f"down: no answer within {timeout_s:g} s"
    except Exception as exc:
        return f"down: {describe(exc, limit=200)}"
    return "ok"


def create_app(settings: IngestSettings, *, consume_uploads: bool = True) -> FastAPI:
    metrics = PipelineMetrics.create()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_ingest(settings, metrics) as res:
            app.state.resources = res
            stop = asyncio.Event()
            consumer = (
                asyncio.create_task(run_upload_consumer(res, stop), name="uploads-consumer")
                if consume_uploads
                else None
            )
            try:
                yield
            finally:
                stop.set()
                if consumer is not None:
                    await asyncio.gather(consumer, return_exceptions=True)

    app = FastAPI(title="rmbg-pipeline ingest", version="1", lifespan=lifespan)
    app.mount("/metrics", make_asgi_app(registry=metrics.registry))

    for exc_type in (RmbgError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError, BotoCoreError, OSError):
        app.add_exception_handler(exc_type, _classified)
    app.include_router(router)
    return app
