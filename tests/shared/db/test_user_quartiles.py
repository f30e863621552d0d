"""Design query 6 over all time from ix_user_job_counts_rank (stats.sql user_quartile_bounds, user_quartile,
top_users): the same quartiles as NTILE(4) over every user (user_job_quartiles_all), for any number of
users and with ties."""

from __future__ import annotations

import random

import asyncpg
import pytest

from shared.db.repositories import Repositories
from tests.shared.db.conftest import rolled_back


async def _expected(conn: asyncpg.Connection, repos: Repositories):  # type: ignore[no-untyped-def]
    return await repos.jobs.user_job_quartiles(conn)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 7, 9, 13, 40, 101])
async def test_bounds_ranks_and_top_match_ntile(conn: asyncpg.Connection, repos: Repositories, n: int) -> None:
    rng = random.Random(n)
    async with rolled_back(conn):
        await conn.execute("DELETE FROM user_job_counts")
        # Few distinct counts, so quartiles split ties by user_id; zero-count users are not ranked.
        rows = [(f"q-{rng.randrange(10**6):06d}-{i}", rng.choice([1, 1, 2, 3, 5, 8, 40])) for i in range(n)]
        rows += [(f"zero-{i}", 0) for i in range(3)]
        await conn.executemany("INSERT INTO user_job_counts (user_id, jobs) VALUES ($1, $2)", rows)
        expected = await _expected(conn, repos)
        quartiles = await repos.stats.user_quartiles(conn)
        assert quartiles.total_users == len(expected) == n
        by_q: dict[int, list[int]] = {}
        for r in expected:
            by_q.setdefault(r.quartile, []).append(r.job_count)
        assert [(b.quartile, b.users, b.min_jobs, b.max_jobs) for b in quartiles.bounds] == [
            (q, len(c), min(c), max(c)) for q, c in sorted(by_q.items())
        ]
        for r in expected:
            assert await repos.stats.user_quartile(conn, user_id=r.user_id, bounds=quartiles.bounds) == r
        assert await repos.stats.user_quartile(conn, user_id="zero-0", bounds=quartiles.bounds) is None
        assert await repos.stats.user_quartile(conn, user_id="nobody", bounds=quartiles.bounds) is None
        for limit in (1, 5, 1000):
            assert await repos.stats.top_users(conn, limit=limit, bounds=quartiles.bounds) == expected[:limit]


async def test_total_follows_inserts_updates_deletes_and_truncate(conn: asyncpg.Connection) -> None:
    async def total() -> int:
        return int(await conn.fetchval("SELECT users FROM user_job_counts_total"))

    async def counted() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM user_job_counts WHERE jobs > 0"))

    async with rolled_back(conn):
        assert await total() == await counted()
        base = await total()
        await conn.execute(
            "INSERT INTO user_job_counts (user_id, jobs) VALUES ('tot-a', 1), ('tot-b', 0), ('tot-c', 4)"
        )
        assert await total() == base + 2
        # count_user's upsert: an existing user's increment changes nothing, a zero user starting does.
        await conn.execute(
            "INSERT INTO user_job_counts AS c (user_id, jobs) VALUES ('tot-a', 1), ('tot-b', 1) "
            "ON CONFLICT (user_id) DO UPDATE SET jobs = c.jobs + 1"
        )
        assert await total() == base + 3
        await conn.execute("UPDATE user_job_counts SET jobs = 0 WHERE user_id IN ('tot-a', 'tot-c')")  # retention
        assert await total() == base + 1
        await conn.execute("DELETE FROM user_job_counts WHERE user_id LIKE 'tot-%'")
        assert await total() == base == await counted()
        await conn.execute("TRUNCATE user_job_counts")
        assert await total() == 0


async def test_top_users_checks_limit(conn: asyncpg.Connection, repos: Repositories) -> None:
    with pytest.raises(ValueError):
        await repos.stats.top_users(conn, limit=0, bounds=[])


async def test_bounds_use_the_rank_index(conn: asyncpg.Connection) -> None:
    async with rolled_back(conn):
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT c.jobs FROM user_job_counts c WHERE c.jobs > 0 ORDER BY c.jobs, c.user_id LIMIT 1"))
        assert "ix_user_job_counts_rank" in plan


async def test_snapshot_serves_the_stored_bounds_while_fresh(conn: asyncpg.Connection, repos: Repositories) -> None:
    from datetime import timedelta

    async with rolled_back(conn):
        await conn.execute("DELETE FROM user_job_counts")
        await conn.execute("DELETE FROM user_quartile_snapshot")
        minute = timedelta(minutes=1)
        assert await repos.stats.user_quartiles_snapshot(conn, max_age=minute) is None  # none stored
        await repos.stats.refresh_user_quartiles(conn)
        assert await repos.stats.user_quartiles_snapshot(conn, max_age=minute) is None  # no users then: live

        await conn.executemany(
            "INSERT INTO user_job_counts (user_id, jobs) VALUES ($1, $2)", [(f"s-{i:02d}", i + 1) for i in range(8)]
        )
        stored = await repos.stats.refresh_user_quartiles(conn)
        assert stored.as_of is not None and stored.total_users == 8
        snap = await repos.stats.user_quartiles_snapshot(conn, max_age=minute)
        assert snap is not None
        assert snap == stored and snap.bounds == (await repos.stats.user_quartiles(conn)).bounds

        # Counts move on; the snapshot's bounds stay until the next refresh, and users are placed against them.
        await conn.execute("INSERT INTO user_job_counts (user_id, jobs) VALUES ('a-new', 1), ('z-big', 500)")
        again = await repos.stats.user_quartiles_snapshot(conn, max_age=minute)
        assert again is not None and again.total_users == 8
        newcomer = await repos.stats.user_quartile(conn, user_id="a-new", bounds=again.bounds)
        assert newcomer is not None and newcomer.quartile == 1  # sorts before the stored first row: still 1
        big = await repos.stats.user_quartile(conn, user_id="z-big", bounds=again.bounds)
        assert big is not None and (big.job_count, big.quartile) == (500, 4)

        # Too old: not served (the endpoint computes live then).
        await conn.execute("UPDATE user_quartile_snapshot SET computed_at = computed_at - interval '10 minutes'")
        assert await repos.stats.user_quartiles_snapshot(conn, max_age=minute) is None
        assert await repos.stats.user_quartiles_snapshot(conn, max_age=timedelta(hours=1)) is not None
