"""Liveness and readiness: the only routes besides /metrics and the gallery's page that need no key.

The same checks as every service's telemetry port (shared/health.py): live while the process answers and
the upload consumer is not wedged; ready when PostgreSQL, the object store and the broker each answer
within ``RMBG_INGEST__READY_TIMEOUT_S`` and the upload consumer has joined its group.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.ingest.auth import Resources

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(res: Resources) -> JSONResponse:
    report = res.health.liveness()
    body = {"status": "ok" if report.ok else "wedged", **report.as_json("live")}
    return JSONResponse(body, status_code=200 if report.ok else 503)


@router.get("/readyz")
async def readyz(res: Resources) -> JSONResponse:
    """Ready when every dependency answers, each within the readiness timeout, and consumers have joined."""
    report = await res.health.readiness()
    return JSONResponse(report.as_json("ready"), status_code=200 if report.ok else 503)
