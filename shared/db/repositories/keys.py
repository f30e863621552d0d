"""API keys and idempotency keys (SQL in shared/db/queries/keys.sql)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from shared.db.models import ApiKeyRecord, IdempotentJob
from shared.db.queryset import Queries, default_queries


class KeysRepository:
    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def insert(
        self,
        conn: asyncpg.Connection,
        *,
        key_id: str,
        user_id: str,
        key_hash: bytes,
        is_admin: bool,
        name: str | None,
        rate_per_s: float | None = None,
        daily_quota: int | None = None,
    ) -> ApiKeyRecord:
        """Insert a key for ``user_id``, creating the user on first sight (as a job does)."""
        async with conn.transaction():
            await self._q.upsert_user(conn, user_id=user_id, username=None, email_encrypted=None, email_digest=None)
            row = await self._q.insert_key(
                conn,
                key_id=key_id,
                user_id=user_id,
                key_hash=key_hash,
                is_admin=is_admin,
                name=name,
                rate_per_s=rate_per_s,
                daily_quota=daily_quota,
            )
        if row is None:  # pragma: no cover - INSERT .. RETURNING always returns the row
            raise RuntimeError("insert_key returned no row")
        return ApiKeyRecord.from_row(row)

    async def get(self, conn: asyncpg.Connection, *, key_id: str) -> ApiKeyRecord | None:
        row = await self._q.get_key(conn, key_id=key_id)
        return ApiKeyRecord.from_row(row) if row is not None else None

    async def list(self, conn: asyncpg.Connection, *, user_id: str | None) -> list[ApiKeyRecord]:
        return [ApiKeyRecord.from_row(r) for r in await self._q.list_keys(conn, user_id=user_id)]

    async def revoke(self, conn: asyncpg.Connection, *, key_id: str, user_id: str | None) -> ApiKeyRecord | None:
        row = await self._q.revoke_key(conn, key_id=key_id, user_id=user_id)
        return ApiKeyRecord.from_row(row) if row is not None else None

    async def touch(self, conn: asyncpg.Connection, *, key_id: str) -> None:
        await self._q.touch_key(conn, key_id=key_id)

    # -- idempotency keys ---------------------------------------------------------------------------

    async def find_idempotent_job(
        self, conn: asyncpg.Connection, *, user_id: str, idem_key: str
    ) -> IdempotentJob | None:
        row = await self._q.find_idempotent_job(conn, user_id=user_id, idem_key=idem_key)
        return IdempotentJob(row["job_id"], bytes(row["fingerprint"]), row["created_at"]) if row else None

    async def claim_idempotency_key(
        self, conn: asyncpg.Connection, *, user_id: str, idem_key: str, fingerprint: bytes, job_id: UUID
    ) -> bool:
        """True when this call recorded the key; False when another request holds it already."""
        claimed = await self._q.claim_idempotency_key(
            conn, user_id=user_id, idem_key=idem_key, fingerprint=fingerprint, job_id=job_id
        )
        return claimed is True

    async def prune_idempotency_keys(self, conn: asyncpg.Connection, *, before: datetime) -> int:
        return int(await self._q.prune_idempotency_keys(conn, before=before))
