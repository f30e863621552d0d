"""Global views for admin keys: every user's stats, per-user counts and quartiles, params counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.ingest.auth import AdminUser, Resources
from services.ingest.errors import ERROR_RESPONSES, ErrorResponse, json_object_param

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={**ERROR_RESPONSES, 403: {"model": ErrorResponse, "description": "not an admin key"}},
)


@router.get("/stats/daily")
async def daily_stats(res: Resources, _: AdminUser, days: Annotated[int, Query(ge=1, le=366)] = 30) -> dict[str, Any]:
    """All users' jobs per UTC day (processing_stats, kept exact by the stats service), oldest first."""
    async with res.db.pool.acquire() as conn:
        rows = await res.db.stats.daily_totals(conn, days=days)
    return {"days": [r.model_dump(mode="json") for r in rows]}


@router.get("/stats/users")
async def user_counts(
    res: Resources,
    _: AdminUser,
    days: Annotated[int | None, Query(ge=1, le=366, description="jobs of the last N days; all time if unset")] = None,
    user: Annotated[str | None, Query(max_length=64, description="one user's row")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Per-user job counts and quartiles (design query 6), the busiest first, with the quartiles' bounds."""
    if days is None:
        # All time: the bounds the stats service stored (migration 0015; live from ix_user_job_counts_rank when
        # that is missing or stale), then the page or one user's quartile against them, without ranking every
        # user. Live bounds are read in the same snapshot as the page, so they agree exactly.
        max_age = timedelta(seconds=res.settings.ingest.quartiles_max_age_s)
        async with res.db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            quartiles = await res.db.stats.user_quartiles_snapshot(conn, max_age=max_age)
            if quartiles is None:
                quartiles = await res.db.stats.user_quartiles(conn)
            if user:
                one = await res.db.stats.user_quartile(conn, user_id=user, bounds=quartiles.bounds)
                chosen = [one] if one is not None else []
            else:
                chosen = await res.db.stats.top_users(conn, limit=limit, bounds=quartiles.bounds)
        return {
            "users": quartiles.total_users,
            # When the bounds were computed (null: just now); users' counts are always current.
            "as_of": quartiles.as_of.isoformat() if quartiles.as_of is not None else None,
            "quartiles": [
                {"quartile": b.quartile, "min_jobs": b.min_jobs, "max_jobs": b.max_jobs, "users": b.users}
                for b in quartiles.bounds
            ],
            "items": [r._asdict() for r in chosen],
        }
    since = datetime.now(UTC) - timedelta(days=days)
    async with res.db.pool.acquire() as conn:
        rows = await res.db.jobs.user_job_quartiles(conn, since=since)
    bounds: dict[int, dict[str, int]] = {}
    for row in rows:
        b = bounds.setdefault(row.quartile, {"min_jobs": row.job_count, "max_jobs": row.job_count, "users": 0})
        b["min_jobs"] = min(b["min_jobs"], row.job_count)
        b["max_jobs"] = max(b["max_jobs"], row.job_count)
        b["users"] += 1
    picked = [r for r in rows if r.user_id == user] if user else rows[:limit]
    return {
        "users": len(rows),
        "quartiles": [{"quartile": q, **bounds[q]} for q in sorted(bounds)],
        "items": [r._asdict() for r in picked],
    }


@router.get("/stats/params")
async def params_count(
    res: Resources,
    _: AdminUser,
    contains: Annotated[str, Query(description='JSON object, e.g. {"threshold": 0.9}')],
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> dict[str, Any]:
    """Jobs of all users accepted in the last ``days`` days whose params contain ``contains``."""
    wanted = json_object_param(contains, "contains")
    today = datetime.now(UTC).date()
    date_from = today - timedelta(days=days - 1)
    async with res.db.pool.acquire() as conn:
        jobs = await res.db.stats.params_job_count(conn, contains=wanted, date_from=date_from, date_to=today)
    return {"contains": wanted, "from": date_from.isoformat(), "to": today.isoformat(), "jobs": jobs}
