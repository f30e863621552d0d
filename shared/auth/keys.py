"""API keys: ``rk_<key id>_<secret>``, shown once, stored as a keyed hash, verified through a cache.

- The key id (12 hex characters) is the table's primary key and is safe to log and show in lists; the
  secret (32 random bytes, 256 bits) is what proves possession. The ``rk_`` prefix lets secret scanners
  (GitHub's custom patterns, gitleaks) recognise a leaked key.
- Stored: HMAC-SHA-256(pepper, secret). A secret of 256 random bits cannot be guessed, so a slow
  password hash (argon2: ~50 ms of CPU per call, on every request) buys nothing; the pepper, held by the
  services and not by the database, means a copy of the table alone verifies nothing.
- Cache: a verified key's (user, admin, hash) sits in Redis for ``key_cache_ttl_s``; the secret is still
  compared against the cached hash on every request. Revoking updates PostgreSQL, then overwrites the
  entry with a tombstone; entries are filled with SET NX, so a request that read the key from
  PostgreSQL just before the revocation cannot put it back. Should Redis be down at revocation,
  ``revoke`` says so and the entry lapses within the TTL (60 s by default); with Redis down every
  request reads PostgreSQL (one primary-key lookup, about 0.1 ms).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.db.models import ApiKeyRecord
from shared.db.repositories.keys import KeysRepository
from shared.exceptions import Unauthenticated

log = logging.getLogger(__name__)

_KEY = re.compile(r"^rk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    """The caller, as its key says: every query a request makes is scoped to ``user_id``."""

    user_id: str
    key_id: str
    is_admin: bool
    # The key's own limits; None takes the service defaults (services/ingest/limits.py).
    rate_per_s: float | None = None
    daily_quota: int | None = None


@dataclass(frozen=True)
class IssuedKey:
    key: str  # the whole key: shown once, never stored
    record: ApiKeyRecord


def parse_key(raw: str) -> tuple[str, str]:
    """(key id, secret) of a well-formed key; Unauthenticated otherwise."""
    match = _KEY.match(raw.strip())
    if match is None:
        raise Unauthenticated("malformed API key")
    return match.group(1), match.group(2)


def hash_secret(pepper: bytes, secret: str) -> bytes:
    return hmac.new(pepper, secret.encode("ascii"), hashlib.sha256).digest()


class ApiKeys:
    """Issue, verify, list and revoke keys. One per process; the pool and Redis client are the caller's."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        repo: KeysRepository,
        pepper: bytes,
        redis: Redis | None,
        cache_ttl_s: int,
        namespace: str = "rmbg",
    ) -> None:
        self._pool = pool
        self._repo = repo
        self._pepper = pepper
        self._redis = redis
        self._ttl = cache_ttl_s
        self._ns = namespace

    def _cache_key(self, key_id: str) -> str:
        return f"{self._ns}:apikey:{key_id}"

    async def issue(
        self,
        *,
        user_id: str,
        is_admin: bool = False,
        name: str | None = None,
        rate_per_s: float | None = None,
        daily_quota: int | None = None,
    ) -> IssuedKey:
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn:
            record = await self._repo.insert(
                conn,
                key_id=key_id,
                user_id=user_id,
                key_hash=hash_secret(self._pepper, secret),
                is_admin=is_admin,
                name=name,
                rate_per_s=rate_per_s,
                daily_quota=daily_quota,
            )
        return IssuedKey(key=f"rk_{key_id}_{secret}", record=record)

    async def verify(self, raw: str) -> Principal:
        """The principal behind ``raw``; Unauthenticated for anything else (same message for each cause)."""
        key_id, secret = parse_key(raw)
        presented = hash_secret(self._pepper, secret)
        cached = await self._cached(key_id)
        if cached is not None:
            if not cached.get("revoked") and hmac.compare_digest(bytes.fromhex(str(cached["hash"])), presented):
                rate, quota = cached.get("rate"), cached.get("quota")
                return Principal(
                    user_id=str(cached["user_id"]),
                    key_id=key_id,
                    is_admin=bool(cached["admin"]),
                    rate_per_s=float(rate) if isinstance(rate, (int, float)) else None,
                    daily_quota=int(quota) if isinstance(quota, int) else None,
                )
            raise Unauthenticated("invalid API key")
        async with self._pool.acquire() as conn:
            record = await self._repo.get(conn, key_id=key_id)
            if record is None or record.revoked_at is not None or not hmac.compare_digest(record.key_hash, presented):
                raise Unauthenticated("invalid API key")
            await self._repo.touch(conn, key_id=key_id)
        await self._remember(record)
        return Principal(
            user_id=record.user_id,
            key_id=key_id,
            is_admin=record.is_admin,
            rate_per_s=record.rate_per_s,
            daily_quota=record.daily_quota,
        )

    async def list(self, *, user_id: str | None) -> list[ApiKeyRecord]:
        async with self._pool.acquire() as conn:
            return await self._repo.list(conn, user_id=user_id)

    async def revoke(self, *, key_id: str, user_id: str | None = None) -> tuple[ApiKeyRecord | None, bool]:
        """Revoke in PostgreSQL, then forget the cached entry. Returns (the key or None, cache cleared)."""
        async with self._pool.acquire() as conn:
            record = await self._repo.revoke(conn, key_id=key_id, user_id=user_id)
        if record is None:
            return None, True
        return record, await self._forget(key_id)

    async def _cached(self, key_id: str) -> dict[str, object] | None:
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(self._cache_key(key_id))
        except (RedisError, OSError) as exc:
            log.warning("api key cache read failed: %s", exc)
            return None
        if raw is None:
            return None
        doc: dict[str, object] = json.loads(raw)
        return doc

    async def _remember(self, record: ApiKeyRecord) -> None:
        if self._redis is None:
            return
        doc = {
            "user_id": record.user_id,
            "admin": record.is_admin,
            "hash": record.key_hash.hex(),
            "rate": record.rate_per_s,
            "quota": record.daily_quota,
        }
        try:
            await self._redis.set(self._cache_key(record.key_id), json.dumps(doc), ex=self._ttl, nx=True)
        except (RedisError, OSError) as exc:
            log.warning("api key cache write failed: %s", exc)

    async def _forget(self, key_id: str) -> bool:
        if self._redis is None:
            return True
        try:
            await self._redis.set(self._cache_key(key_id), json.dumps({"revoked": True}), ex=self._ttl)
        except (RedisError, OSError) as exc:
            log.error("revoked key %s is still cached (up to %d s): %s", key_id, self._ttl, exc)
            return False
        return True
