"""The caller's own account: who the key says they are, their keys, their stats and their tags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.ingest.auth import CurrentUser, Resources
from services.ingest.errors import ERROR_RESPONSES, RETRY_AFTER_S, ApiError, not_found
from shared.db.models import ApiKeyRecord

router = APIRouter(tags=["account"], responses=ERROR_RESPONSES)


class Me(BaseModel):
    user_id: str
    key_id: str
    is_admin: bool


class KeyView(BaseModel):
    """A key as listed: its id and dates, never its secret or hash."""

    key_id: str
    name: str | None
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> KeyView:
        return cls.model_validate(record.model_dump(exclude={"key_hash", "user_id"}))


@router.get("/v1/me", response_model=Me)
async def me(principal: CurrentUser) -> Me:
    return Me(user_id=principal.user_id, key_id=principal.key_id, is_admin=principal.is_admin)


@router.get("/v1/keys")
async def list_keys(res: Resources, principal: CurrentUser) -> dict[str, list[KeyView]]:
    """The caller's keys, newest first (revoked ones included, with when)."""
    return {"items": [KeyView.of(k) for k in await res.keys.list(user_id=principal.user_id)]}


@router.delete("/v1/keys/{key_id}", response_model=KeyView)
async def revoke_key(res: Resources, principal: CurrentUser, key_id: str) -> KeyView:
    """Revoke one of the caller's keys; it stops working at the next request (the caller's own included).

    503 when the key is revoked in PostgreSQL but its cached verification could not be replaced (Redis
    did not answer): it may keep working until that entry expires. Revoking is idempotent, so repeat the
    request until it answers 200."""
    record, cleared = await res.keys.revoke(key_id=key_id, user_id=principal.user_id)
    if record is None:
        raise not_found(f"key {key_id}")
    if not cleared:
        ttl = res.settings.auth.key_cache_ttl_s
        raise ApiError(
            503,
            "unavailable",
            f"key {key_id} is revoked, but the cache did not answer: it may work for up to {ttl} s more; "
            "repeat this request to confirm",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return KeyView.of(record)


@router.get("/v1/stats")
async def my_stats(
    res: Resources, principal: CurrentUser, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> dict[str, Any]:
    """The caller's jobs of the last ``days`` days by status."""
    since = datetime.now(UTC) - timedelta(days=days)
    async with res.db.pool.acquire() as conn:
        summary = await res.db.stats.user_summary(conn, user_id=principal.user_id, since=since)
    return {"user_id": principal.user_id, "since": since.isoformat(), **summary.model_dump(mode="json")}


@router.get("/v1/tags")
async def search_tags(
    res: Resources,
    principal: CurrentUser,
    q: Annotated[str, Query(min_length=1, max_length=64, description="text to match, fuzzily")],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """The caller's own tags most similar to ``q`` (trigram similarity)."""
    async with res.db.pool.acquire() as conn:
        matches = await res.db.tags.search(conn, query=q, limit=limit, user_id=principal.user_id)
    return {"items": [{"name": m.name, "similarity": round(float(m.similarity), 3)} for m in matches]}
