"""Webhooks the caller can see: a job's delivery and every attempt, and the caller's signing secret.

The dispatcher (services/persister/webhooks.py) sends and records; these routes only read and rotate.
docs/access.md (Webhooks) says how a receiver verifies what it gets.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from services.ingest.auth import CurrentUser, Resources
from services.ingest.errors import ERROR_RESPONSES, not_found
from services.ingest.jobviews import owned_job, parse_job_id
from shared.auth import SecretCipher
from shared.db.models import WebhookAttempt, WebhookRecord
from shared.webhooks import SigningSecrets, WebhookSecrets

router = APIRouter(tags=["webhooks"], responses=ERROR_RESPONSES)


class AttemptView(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None  # None: no HTTP answer (refused, timed out, connection failed)
    latency_ms: int
    error: str | None

    @classmethod
    def of(cls, attempt: WebhookAttempt) -> AttemptView:
        return cls.model_validate(attempt.model_dump(exclude={"job_id"}))


class WebhookView(BaseModel):
    job_id: str
    url: str
    # pending: the job has not ended; due: owed (sending now when sending is true, else at next_attempt_at);
    # delivered; gave_up (the schedule ended, or the target was refused).
    state: Literal["pending", "due", "delivered", "gave_up"]
    event_type: str | None
    sending: bool
    registered_at: datetime
    due_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    # Every attempt, oldest first ("items", as every list this API answers).
    items: list[AttemptView]

    @classmethod
    def of(cls, hook: WebhookRecord, attempts: list[WebhookAttempt]) -> WebhookView:
        sending = hook.state == "due" and hook.lease_token is not None
        return cls(
            job_id=str(hook.job_id),
            url=hook.url,
            state=hook.state,
            event_type=hook.event_type,
            sending=sending,
            registered_at=hook.registered_at,
            due_at=hook.due_at,
            # While an attempt is out, the stored time is its lease's end, not a scheduled attempt.
            next_attempt_at=hook.next_attempt_at if hook.state == "due" and not sending else None,
            delivered_at=hook.delivered_at,
            last_status=hook.last_status,
            last_error=hook.last_error,
            items=[AttemptView.of(a) for a in attempts],
        )


class SecretView(BaseModel):
    """Verify with it: ``standardwebhooks.Webhook(secret).verify(body, headers)``."""

    secret: str
    created_at: datetime
    rotated_at: datetime | None
    # After a rotation the previous secret still signs beside this one until then.
    previous_valid_until: datetime | None

    @classmethod
    def of(cls, secrets: SigningSecrets) -> SecretView:
        return cls(
            secret=secrets.current,
            created_at=secrets.created_at,
            rotated_at=secrets.rotated_at,
            previous_valid_until=secrets.previous_until if secrets.previous else None,
        )


def _secrets(res: Resources) -> WebhookSecrets:
    # Built per request: parsing the Fernet keys costs microseconds and holds nothing open.
    cipher = SecretCipher(res.settings.auth.encryption_keys.get_secret_value(), what="a webhook secret")
    return WebhookSecrets(repo=res.db.webhooks, cipher=cipher)


@router.get("/v1/jobs/{job_id}/webhooks", response_model=WebhookView)
async def job_webhooks(res: Resources, principal: CurrentUser, job_id: str) -> WebhookView:
    """The job's webhook: where its delivery stands and every attempt, oldest first."""
    await owned_job(res, principal, job_id)  # 404 for another user's job, exactly as for a missing one
    async with res.db.pool.acquire() as conn:
        found = await res.db.webhooks.attempts_for_job(conn, job_id=parse_job_id(job_id), user_id=principal.user_id)
    if found is None:
        raise not_found(f"webhook for job {job_id}")
    return WebhookView.of(*found)


@router.get("/v1/webhooks/secret", response_model=SecretView)
async def webhook_secret(res: Resources, principal: CurrentUser, response: Response) -> SecretView:
    """The caller's signing secret (created on the first call); every webhook of theirs is signed with it."""
    response.headers["Cache-Control"] = "no-store"
    async with res.db.pool.acquire() as conn:
        return SecretView.of(await _secrets(res).get(conn, user_id=principal.user_id))


@router.post("/v1/webhooks/secret/rotate", response_model=SecretView)
async def rotate_webhook_secret(res: Resources, principal: CurrentUser, response: Response) -> SecretView:
    """A new signing secret; the previous one keeps signing beside it for 24 hours."""
    response.headers["Cache-Control"] = "no-store"
    async with res.db.pool.acquire() as conn:
        return SecretView.of(await _secrets(res).rotate(conn, user_id=principal.user_id))
