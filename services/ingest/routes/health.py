"""Liveness and readiness: the only routes besides /metrics and the gallery's page that need no key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.ingest.auth import Resources
from shared.failures import describe

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(res: Resources) -> JSONResponse:
    """Ready when PostgreSQL and the object store answer, each within the readiness timeout."""
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
