"""by_params' per-request plan (params.sql, migration 0012): a rare value is read per params_hash, a common
one walks created_at; both give the answer of jobs.sql by_params."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.db.migrate import upgrade
from shared.db.models import JobRecord
from shared.db.pool import create_pool
from shared.db.repositories import Repositories, create_repositories
from shared.db.repositories.jobs import RARE_PARAMS_MAX_HASHES, RARE_PARAMS_SHARE
from shared.ids import uuid7
from tests.shared.db.conftest import JobFactory, rolled_back, unique_user

NOW = datetime.now(UTC)
# Three parameter combinations: threshold 0.05 is in two of them, cutout_format png in two.
COMBOS: dict[str, dict[str, Any]] = {
    "h-common": {"threshold": 0.5, "cutout_format": "png"},
    "h-rare-a": {"threshold": 0.05, "cutout_format": "webp"},
    "h-rare-b": {"threshold": 0.05, "cutout_format": "png"},
}
ScratchDb = Callable[[], Awaitable[str]]


async def _plain(conn: asyncpg.Connection, repos: Repositories, contains: dict[str, Any]) -> list[JobRecord]:
    rows = await repos.jobs._q.by_params(conn, contains=contains, limit=20)
    return [JobRecord.from_row(r) for r in rows]


async def test_rare_and_common_values_match_the_plain_statement(
    clean_conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    conn = clean_conn
    async with rolled_back(conn):
        await conn.execute("DELETE FROM params_daily_counts")
        await conn.execute("DELETE FROM params_combos")
        user = unique_user("pr")
        counts = {"h-common": 300, "h-rare-a": 2, "h-rare-b": 1}
        i = 0
        for h, n in counts.items():
            for _ in range(n):
                i += 1
                at = NOW - timedelta(days=i % 50, minutes=i)  # two months: two partitions
                await raw_job(conn, at=at, user_id=user, params=COMBOS[h], params_hash=h)
        for h, n in counts.items():
            await conn.execute(
                "INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs) VALUES ($1, $2, $3, $4)",
                NOW.date() - timedelta(days=2), h, COMBOS[h], n,
            )
        # The trigger keeps one row per combination; an old day's row adds no combination and no recent jobs.
        await conn.execute(
            "INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs) VALUES ($1, $2, $3, $4)",
            NOW.date() - timedelta(days=30), "h-common", COMBOS["h-common"], 1000,
        )
        assert await conn.fetchval("SELECT count(*) FROM params_combos") == 3
        for contains in ({"threshold": 0.05}, {"threshold": 0.05, "cutout_format": "webp"}, {"threshold": 0.5},
                         {"cutout_format": "png"}, {"threshold": 0.99}):
            expected = await _plain(conn, repos, contains)
            assert await repos.jobs.by_params(conn, contains=contains, limit=20) == expected, contains
        rare = await repos.jobs._q.params_share(conn, contains={"threshold": 0.05})
        assert rare is not None and list(rare["hashes"]) == ["h-rare-a", "h-rare-b"] and rare["jobs"] == 3
        assert rare["all_jobs"] == 303
        common = await repos.jobs._q.params_share(conn, contains={"cutout_format": "png"})
        assert common is not None and list(common["hashes"]) == ["h-common", "h-rare-b"] and common["jobs"] == 301
        # by_params runs only the chosen path. A job of a combination not counted yet is seen by the plain walk
        # only, so a rare value's answer without it shows that the walk did not run.
        uncounted = await raw_job(
            conn, at=NOW, user_id=user, params={"threshold": 0.05, "cutout_format": "jpeg"}, params_hash="h-new"
        )
        rare_answer = await repos.jobs.by_params(conn, contains={"threshold": 0.05}, limit=20)
        plain_answer = await _plain(conn, repos, {"threshold": 0.05})
        assert [j.job_id for j in plain_answer][1:] == [j.job_id for j in rare_answer] and len(rare_answer) == 3
        assert plain_answer[0].job_id == uncounted
        # A LIMIT below the matches, on both paths (the uncounted job is the plain walk's alone).
        for contains in ({"threshold": 0.05}, {"cutout_format": "png"}):
            expected = [j for j in await _plain(conn, repos, contains) if j.job_id != uncounted][:2]
            assert await repos.jobs.by_params(conn, contains=contains, limit=2) == expected, contains
        # No counts for the week (the stats service behind): the plain statement, planned for the value.
        await conn.execute("DELETE FROM params_daily_counts")
        for contains in ({"threshold": 0.05}, {"cutout_format": "png"}):
            expected = await _plain(conn, repos, contains)
            assert await repos.jobs.by_params(conn, contains=contains, limit=20) == expected, contains
        assert uncounted in {j.job_id for j in await repos.jobs.by_params(conn, contains={"threshold": 0.05})}
        config = await conn.fetchval("SELECT proconfig FROM pg_proc WHERE proname = 'rmbg_jobs_by_params'")
        assert config == ["plan_cache_mode=force_generic_plan"]
        # The rare path reads the new index.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + repos.jobs._q.sql("by_params_hashes"), ["h-rare-a"], 20))
        assert "ix_jobs_params_hash_created" in plan or "params_hash_created" in plan


async def test_a_column_change_prepares_the_statement_again(scratch_database: ScratchDb) -> None:
    """by_params_chosen names image_process_jobs, so asyncpg's cached statement follows a migration that adds
    or drops a column (the function's row type alone would keep the columns as first prepared)."""
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn)
    pool = await create_pool(dsn, min_size=1, max_size=1, command_timeout=30)
    repos = create_repositories()
    try:
        async with pool.acquire() as conn:
            user = unique_user("pc")
            job_id = uuid7()
            assert await repos.jobs.insert_job(
                conn, job_id=job_id, user_id=user, original_ext="png", content_sha256="ef" * 32, original_bytes=1,
                image_width=1, image_height=1, params={"threshold": 0.5}, params_hash="h-pc", model_name="m",
                source="http", tags=[],
            )

            async def keys() -> set[str]:
                rows = await repos.jobs._q.by_params_chosen(
                    conn, contains={"threshold": 0.5}, limit=20, rare_share=RARE_PARAMS_SHARE,
                    max_hashes=RARE_PARAMS_MAX_HASHES,
                )
                assert [r["job_id"] for r in rows] == [job_id]
                return set(rows[0].keys())

            first = await keys()
            assert first == await keys()  # cached
            await conn.execute("ALTER TABLE image_process_jobs ADD COLUMN zz_later int")
            assert await keys() == first | {"zz_later"}
            await conn.execute("ALTER TABLE image_process_jobs DROP COLUMN zz_later, DROP COLUMN queue_offset")
            assert await keys() == first - {"queue_offset"}
    finally:
        await pool.close()


async def test_list_jobs_reads_a_rare_value_per_hash_with_every_filter_and_the_cursor(
    clean_conn: asyncpg.Connection, repos: Repositories, raw_job: JobFactory
) -> None:
    """list_jobs over all users with a rare params value reads per params_hash (jobs.sql list_jobs_by_hashes)
    and gives the walk's pages under the status, time and cursor filters; a common value walks."""
    conn = clean_conn
    async with rolled_back(conn):
        await conn.execute("DELETE FROM params_daily_counts")
        await conn.execute("DELETE FROM params_combos")
        jobs = {"h-common": 30, "h-rare-a": 12, "h-rare-b": 9}
        i = 0
        for h, n in jobs.items():
            for k in range(n):
                i += 1
                at = NOW - timedelta(days=i % 50, minutes=i)  # two months: two partitions
                await raw_job(conn, at=at, user_id=unique_user("pl"), params=COMBOS[h], params_hash=h,
                              status=("failed", "completed", "pending")[k % 3])
        # The counts say the value is on 21 of 10,021 jobs this week: rare (under 1%).
        for h, n in {"h-common": 10000, "h-rare-a": 12, "h-rare-b": 9}.items():
            await conn.execute(
                "INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs) VALUES ($1, $2, $3, $4)",
                NOW.date() - timedelta(days=1), h, COMBOS[h], n,
            )
        uncounted = await raw_job(
            conn, at=NOW, user_id=unique_user("pl"), params={"threshold": 0.05, "cutout_format": "jpeg"},
            params_hash="h-new",
        )

        rare = {"threshold": 0.05}
        for filters in ({}, {"status": "failed"}, {"status": "pending"},
                        {"created_from": NOW - timedelta(days=45), "created_to": NOW - timedelta(days=35)}):
            walked = [j for page in await _pages(conn, repos, rare, walk=True, **filters) for j in page]
            read = [j for page in await _pages(conn, repos, rare, walk=False, **filters) for j in page]
            # Only the walk sees the combination the counts do not know yet: that is how the rare path shows.
            assert read == [j for j in walked if j != uncounted] and read, filters
        assert uncounted in [j for page in await _pages(conn, repos, rare, walk=True) for j in page]
        # A common value walks: the repository's pages are the walk's, the uncounted job included.
        for contains in ({"cutout_format": "png"}, {}):
            assert await _pages(conn, repos, contains, walk=False) == await _pages(conn, repos, contains, walk=True)


async def _pages(
    conn: asyncpg.Connection, repos: Repositories, contains: dict[str, Any], *, walk: bool, **filters: Any
) -> list[list[Any]]:
    """list_jobs' pages of 5 over all users. walk: with the week's counts hidden (rolled back), so that no
    value is judged rare and jobs.sql list_jobs walks."""
    pages: list[list[Any]] = []
    cursor = None
    while True:
        async with rolled_back(conn):
            if walk:
                await conn.execute("DELETE FROM params_daily_counts")
            page, cursor = await repos.jobs.list_jobs(conn, params=contains, cursor=cursor, limit=5, **filters)
        pages.append([j.job_id for j in page])
        if cursor is None:
            return pages
