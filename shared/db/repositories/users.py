"""Users: profile upserts and logins. Jobs create their user row themselves (insert_job)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.db.models import UserRecord
from shared.db.queryset import Queries, default_queries


class UsersRepository:
    """SQL in shared/db/queries/users.sql. Construct once per process and share."""

    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def upsert(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: str,
        username: str | None = None,
        email_encrypted: bytes | None = None,
        email_digest: bytes | None = None,
    ) -> UserRecord:
        """Create or update a user; a None field keeps the stored value (a new user is named by id).

        The email arrives encrypted with its digest (shared.auth.EmailCipher). Raises
        asyncpg.UniqueViolationError when the digest belongs to another user.
        """
        row = await self._q.upsert_user(
            conn,
            user_id=user_id,
            username=username,
            email_encrypted=email_encrypted,
            email_digest=email_digest,
        )
        if row is None:  # pragma: no cover - INSERT .. ON CONFLICT DO UPDATE always returns the row
            raise RuntimeError("upsert_user returned no row")
        return UserRecord.from_row(row)

    async def get(self, conn: asyncpg.Connection, *, user_id: str) -> UserRecord | None:
        row = await self._q.get_user(conn, user_id=user_id)
        return UserRecord.from_row(row) if row is not None else None

    async def find_by_email(self, conn: asyncpg.Connection, *, email_digests: list[bytes]) -> UserRecord | None:
        """The user whose email has one of these digests (EmailCipher.digests: one per encryption key)."""
        row = await self._q.find_user_by_email(conn, email_digests=email_digests)
        return UserRecord.from_row(row) if row is not None else None

    async def touch_login(self, conn: asyncpg.Connection, *, user_id: str, at: datetime | None = None) -> bool:
        """Set last_login (now by default); False when the user does not exist."""
        return await self._q.touch_login(conn, user_id=user_id, at=at) is True
