"""Operator commands for API keys (``rmbg keys ...``): they talk to PostgreSQL and Redis directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from shared.auth import ApiKeys, EmailCipher, IssuedKey
from shared.cache import open_redis
from shared.config import BaseServiceSettings
from shared.db import Database, open_database
from shared.db.models import ApiKeyRecord
from shared.exceptions import ContractError


@contextlib.asynccontextmanager
async def open_keys(settings: BaseServiceSettings) -> AsyncIterator[tuple[ApiKeys, Database]]:
    async with open_database(settings.postgres) as db, open_redis(settings.redis) as redis:
        yield (
            ApiKeys(
                pool=db.pool,
                repo=db.keys,
                pepper=settings.auth.key_pepper.get_secret_value().encode(),
                redis=redis,
                cache_ttl_s=settings.auth.key_cache_ttl_s,
            ),
            db,
        )


async def create_key(
    settings: BaseServiceSettings,
    *,
    user_id: str,
    admin: bool,
    name: str | None,
    email: str | None,
    rate_per_s: float | None = None,
    daily_quota: int | None = None,
) -> IssuedKey:
    """Issue a key for ``user_id`` (creating the user); ``email`` is stored encrypted, never logged."""
    async with open_keys(settings) as (keys, db):
        if email is not None:
            cipher = EmailCipher(settings.auth.encryption_keys.get_secret_value())
            async with db.pool.acquire() as conn:
                # The unique index sees only the newest key's digest; a row from before a key rotation holds
                # another, so the taken-check matches the email's digest under every key.
                holder = await db.users.find_by_email(conn, email_digests=cipher.digests(email))
                if holder is not None and holder.user_id != user_id:
                    raise ContractError("that email belongs to another user")
                try:
                    await db.users.upsert(
                        conn, user_id=user_id, email_encrypted=cipher.encrypt(email), email_digest=cipher.digest(email)
                    )
                except asyncpg.UniqueViolationError:
                    raise ContractError("that email belongs to another user") from None
        return await keys.issue(
            user_id=user_id, is_admin=admin, name=name, rate_per_s=rate_per_s, daily_quota=daily_quota
        )


async def list_keys(settings: BaseServiceSettings, *, user_id: str | None) -> list[ApiKeyRecord]:
    async with open_keys(settings) as (keys, _):
        return await keys.list(user_id=user_id)


async def revoke_key(settings: BaseServiceSettings, *, key_id: str) -> tuple[ApiKeyRecord | None, bool]:
    async with open_keys(settings) as (keys, _):
        return await keys.revoke(key_id=key_id)
