"""by_params' per-request plan (params.sql, migration 0012): a rare value is read per params_hash, a common
one walks created_at; both give the answer of jobs.sql by_params."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.db.models import JobRecord
from shared.db.repositories import Repositories
from tests.shared.db.conftest import JobFactory, rolled_back, unique_user

NOW = datetime.now(UTC)


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
        combos = {
            "h-common": {"threshold": 0.5, "cutout_format": "png"},
            "h-rare-a": {"threshold": 0.05, "cutout_format": "webp"},
            "h-rare-b": {"threshold": 0.05, "cutout_format": "png"},
        }
        counts = {"h-common": 300, "h-rare-a": 2, "h-rare-b": 1}
        i = 0
        for h, n in counts.items():
            for _ in range(n):
                i += 1
                at = NOW - timedelta(days=i % 50, minutes=i)  # two months: two partitions
                await raw_job(conn, at=at, user_id=user, params=combos[h], params_hash=h)
        for h, n in counts.items():
            await conn.execute(
                "INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs) VALUES ($1, $2, $3, $4)",
                NOW.date() - timedelta(days=2), h, combos[h], n,
            )
        # The trigger keeps one row per combination; an old day's row adds no combination and no recent jobs.
        await conn.execute(
            "INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs) VALUES ($1, $2, $3, $4)",
            NOW.date() - timedelta(days=30), "h-common", combos["h-common"], 1000,
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
        # by_params is one statement with both paths; only the chosen one runs. A job of a combination not
        # counted yet is seen by the plain walk only, so a rare value's answer without it shows that the walk
        # did not run (with both, UNION ALL would also repeat the three counted jobs).
        uncounted = await raw_job(
            conn, at=NOW, user_id=user, params={"threshold": 0.05, "cutout_format": "jpeg"}, params_hash="h-new"
        )
        rare_answer = await repos.jobs.by_params(conn, contains={"threshold": 0.05}, limit=20)
        plain_answer = await _plain(conn, repos, {"threshold": 0.05})
        assert [j.job_id for j in plain_answer][1:] == [j.job_id for j in rare_answer] and len(rare_answer) == 3
        assert plain_answer[0].job_id == uncounted
        # The rare path reads the new index.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + repos.jobs._q.sql("by_params_hashes"), ["h-rare-a"], 20))
        assert "ix_jobs_params_hash_created" in plan or "params_hash_created" in plan

