"""A job's stored objects: presigned URLs in its detail, and ``GET /v1/jobs/{id}/{kind}`` to fetch one.

With ``result_delivery="redirect"`` the API signs a short-lived SigV4 URL and clients download from the
object store directly (no bytes through the API); ``"stream"`` relays them, for stores that clients
cannot reach. Either way the caller must own the job (services/ingest/auth.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, StreamingResponse

from services.ingest.auth import CurrentUser, Resources
from services.ingest.errors import ERROR_RESPONSES, ApiError
from services.ingest.jobviews import KEY_FIELD, ResultKind, download_name, owned_job
from shared.exceptions import ObjectMissing

router = APIRouter(tags=["results"], responses=ERROR_RESPONSES)


@router.get(
    "/v1/jobs/{job_id}/{kind}",
    response_class=RedirectResponse,
    status_code=307,
    responses={
        200: {"description": "the object's bytes (result_delivery=stream)", "content": {"image/*": {}}},
        307: {"description": "a presigned URL of the object store, valid for result_url_ttl_s"},
    },
)
async def get_result(res: Resources, principal: CurrentUser, job_id: str, kind: ResultKind) -> Any:
    """Fetch the job's original, mask or cut-out (404 ``not_ready`` until the job has it)."""
    job = await owned_job(res, principal, job_id)
    key = job.get(KEY_FIELD[kind])
    if not key:
        raise ApiError(404, "not_ready", f"job {job_id} has no {kind.value} yet (status {job['status']})")
    name = download_name(job, kind, key)
    options = res.settings.ingest
    if options.result_delivery == "redirect":
        url = await res.store.presigned_get(key, expires_s=options.result_url_ttl_s, download_name=name)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    try:
        info, chunks = await res.store.open_stream(key)
    except ObjectMissing:
        # The row names an object the store no longer has (retention removed it, or fsck will rebuild
        # it): gone for this request, not a fault of the request (ObjectMissing alone would answer 422).
        raise ApiError(404, "not_found", f"job {job_id}'s {kind.value} is no longer stored") from None
    return StreamingResponse(
        chunks,
        media_type=info.content_type or "application/octet-stream",
        headers={
            "Content-Length": str(info.size),
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "private, max-age=3600",  # content-addressed: the bytes under a key never change
        },
    )
