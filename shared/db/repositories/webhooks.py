"""Webhooks: the outbox of job endings with a callback, its attempts, and users' signing secrets
(SQL in shared/db/queries/webhooks.sql, tables and trigger in migration 0009).

A row is registered in intake's transaction; the trigger on image_process_jobs makes it due when the
job ends, whoever ends it; the persister's dispatcher (services/persister/webhooks.py) claims due rows
under a lease and records each attempt. This module stores; it decides nothing about retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast
from uuid import UUID

import asyncpg

from shared.db.models import WebhookAttempt, WebhookRecord, WebhookSecretRecord, WebhookState
from shared.db.queryset import Queries, default_queries
from shared.failures import clean_text

# Errors are kept readable, not whole: an exception chain or an HTML error page is cut here.
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class AttemptResult:
    """What one POST did: its start, the HTTP status (None when no answer came), latency and error."""

    at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None


class WebhooksRepository:
    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    # -- the outbox ---------------------------------------------------------------------------------

    async def register(
        self, conn: asyncpg.Connection, *, job_id: UUID, created_at: datetime, user_id: str, url: str
    ) -> WebhookState | None:
        """Give the job a callback: ``pending`` (``due`` when the job has ended already); None when the job
        had one already (a retried intake keeps the first). Call it inside intake's transaction, before or
        after the job's insert; ``url`` must have passed ``shared.outbound.check_url``."""
        state = await self._q.register_webhook(conn, job_id=job_id, created_at=created_at, user_id=user_id, url=url)
        return cast(WebhookState | None, state)

    async def get(self, conn: asyncpg.Connection, *, job_id: UUID) -> WebhookRecord | None:
        row = await self._q.get_webhook(conn, job_id=job_id)
        return WebhookRecord.from_row(row) if row is not None else None

    async def claim_due(
        self, conn: asyncpg.Connection, *, limit: int, lease_s: float, max_attempts: int, max_age_s: float
    ) -> list[WebhookRecord]:
        """Up to ``limit`` due rows, each leased to this caller for ``lease_s`` with its attempt number drawn
        (``attempts``) and a fresh ``lease_token``. A due row already at ``max_attempts``, or due for more
        than ``max_age_s``, is given up instead (with the reason in ``last_error``), never claimed. Run it
        outside a longer transaction: the lease is what keeps other replicas off, and it only counts once
        committed."""
        rows = await self._q.claim_due_webhooks(
            conn, limit=limit, lease_s=float(lease_s), max_attempts=max_attempts, max_age_s=float(max_age_s)
        )
        return [WebhookRecord.from_row(r) for r in rows]

    async def record_attempt(
        self,
        conn: asyncpg.Connection,
        *,
        claimed: WebhookRecord,
        result: AttemptResult,
        state: WebhookState,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Store the attempt, then move the row to ``state`` (``due`` again at ``next_attempt_at``,
        ``delivered`` or ``gave_up``) if this caller still holds its lease. False when the lease was lost:
        another replica owns the row now, and only the attempt was stored."""
        if claimed.lease_token is None:
            raise ValueError("record_attempt needs a row returned by claim_due")
        error = clean_text(result.error, limit=_MAX_ERROR_CHARS) if result.error else None
        async with conn.transaction():
            await self._q.insert_attempt(
                conn,
                job_id=claimed.job_id,
                attempt=claimed.attempts,
                at=result.at,
                status_code=result.status_code,
                latency_ms=max(0, result.latency_ms),
                error=error,
            )
            applied = await self._q.finish_attempt(
                conn,
                job_id=claimed.job_id,
                lease_token=claimed.lease_token,
                state=state,
                next_attempt_at=next_attempt_at if state == "due" else None,
                status_code=result.status_code,
                error=error,
                delivered_at=result.at if state == "delivered" else None,
            )
        return applied is True

    async def attempts_for_job(
        self, conn: asyncpg.Connection, *, job_id: UUID, user_id: str
    ) -> tuple[WebhookRecord, list[WebhookAttempt]] | None:
        """The caller's webhook for the job with every attempt, oldest first; None when the job has no
        webhook or is another user's (the API answers both with the same 404)."""
        row = await self._q.webhook_for_user(conn, job_id=job_id, user_id=user_id)
        if row is None:
            return None
        attempts = await self._q.attempts_of(conn, job_id=job_id)
        return WebhookRecord.from_row(row), [WebhookAttempt.from_row(a) for a in attempts]

    async def prune(self, conn: asyncpg.Connection, *, before: datetime) -> int:
        """Delete the webhooks (and attempts) of jobs created before ``before``: retention's cutoff."""
        return int(await self._q.prune_webhooks(conn, before=before))

    # -- signing secrets ----------------------------------------------------------------------------

    async def get_secret(self, conn: asyncpg.Connection, *, user_id: str) -> WebhookSecretRecord | None:
        row = await self._q.get_webhook_secret(conn, user_id=user_id)
        return WebhookSecretRecord.from_row(row) if row is not None else None

    async def get_or_create_secret(
        self, conn: asyncpg.Connection, *, user_id: str, candidate_encrypted: bytes
    ) -> WebhookSecretRecord:
        """The user's secret; ``candidate_encrypted`` becomes it when the user has none (the first of two
        concurrent first calls wins, and both return the winner's). The user row must exist."""
        found = await self.get_secret(conn, user_id=user_id)
        if found is not None:
            return found
        row = await self._q.create_webhook_secret(conn, user_id=user_id, secret_encrypted=candidate_encrypted)
        if row is None:
            row = await self._q.get_webhook_secret(conn, user_id=user_id)
        if row is None:  # pragma: no cover - the conflicting row cannot vanish: secrets are never deleted
            raise RuntimeError(f"webhook secret of {user_id} vanished")
        return WebhookSecretRecord.from_row(row)

    async def rotate_secret(
        self, conn: asyncpg.Connection, *, user_id: str, secret_encrypted: bytes, previous_until: datetime
    ) -> WebhookSecretRecord:
        """Replace the user's secret; the old one keeps signing beside it until ``previous_until``."""
        row = await self._q.rotate_webhook_secret(
            conn,
            user_id=user_id,
            secret_encrypted=secret_encrypted,
            previous_until=previous_until,
        )
        if row is None:  # pragma: no cover - INSERT .. ON CONFLICT DO UPDATE .. RETURNING always returns
            raise RuntimeError("rotate_webhook_secret returned no row")
        return WebhookSecretRecord.from_row(row)
