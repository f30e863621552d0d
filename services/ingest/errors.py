"""Every error the API answers, in one shape: ``{"error": {"code": ..., "message": ...}}``.

``code`` is stable and machine-readable (clients branch on it); ``message`` is for people; neither ever
holds a stack trace. Validation errors add ``details`` (where and what). Errors that escape a handler
are answered by the failure taxonomy (docs/failures.md): transient → 503 + Retry-After (nothing was
accepted, so the same request may be retried), permanent → 422, anything else → 500, logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.exceptions import FetchRefused, Overloaded, RateLimited, RmbgError, Unauthenticated
from shared.failures import FailureClass, classify, describe

log = logging.getLogger(__name__)

# Seconds a client is told to wait when a dependency is down: long enough not to hammer a restarting
# database, short enough that a blip costs little.
RETRY_AFTER_S = 5

# Codes for plain HTTP statuses raised by the framework (unknown route, wrong method...).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx (documented in the OpenAPI document)."""

    error: ErrorBody


class ApiError(Exception):
    """Raised by handlers for a refusal with a status, a stable code and a readable message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


def json_object_param(raw: str, name: str) -> dict[str, Any]:
    """A query or form field that must hold a JSON object, parsed; else a 422 naming the field."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    except RecursionError:
        # Thousands of nested brackets (they fit in a URL) exhaust the decoder's stack.
        raise ApiError(422, "invalid_request", f"{name} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", f"{name} must be a JSON object")
    return value


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what}")


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers, details=exc.details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg", ""))}
        for e in exc.errors()[:10]
    ]
    message = "; ".join(f"{d['where']}: {d['problem']}" for d in details) or "invalid request"
    return error_response(422, "invalid_request", message, details=details)


async def _classified(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, Unauthenticated):
        return error_response(
            401, "unauthenticated", f"{exc}: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, RateLimited):
        return error_response(429, exc.code, exc.reason, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, Overloaded):
        return error_response(503, "overloaded", exc.reason, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, FetchRefused):
        return error_response(413 if exc.code == "too_large" else 422, exc.code, exc.reason)
    cls = classify(exc)
    if cls is FailureClass.TRANSIENT:
        log.error("dependency unavailable: %s", describe(exc, limit=300))
        return error_response(
            503, "unavailable", "a dependency is unavailable, retry later", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    if cls is FailureClass.PERMANENT:
        return error_response(422, "invalid_request", f"invalid request: {describe(exc, limit=500)}")
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_type in (RmbgError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError, BotoCoreError, OSError):
        app.add_exception_handler(exc_type, _classified)
    # Anything else (a bug) still answers in the same shape, without a trace.
    app.add_exception_handler(Exception, _classified)


# For route decorators: the error responses every authenticated endpoint may give, in the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no key, or an unknown or revoked one"},
    404: {"model": ErrorResponse, "description": "no such resource for this key's user"},
    422: {"model": ErrorResponse, "description": "the request is invalid"},
    503: {"model": ErrorResponse, "description": "a dependency is unavailable; retry after Retry-After"},
}
