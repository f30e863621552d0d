"""python -m bench.user_quartiles: design query 6 over all time, ranked live vs from ix_user_job_counts_rank.

    .venv/bin/python -m bench.user_quartiles --dsn postgresql://postgres@127.0.0.1:5432/postgres

Only user_job_counts is read, so this fills just that table in a scratch database (rmbg_bench_quartiles,
migrated to head, dropped at the end): 50,000 users with the storage bench's Zipf 0.8 load at 10M jobs
(the busiest user 255k jobs, the median ~78; round(255000 * rank^-0.8)), user ids in random order of load.
Times client-side through the project's repositories (asyncpg prepared statements, jit off as in the
services' pools), interleaved per round, and reports p50 / p95 per variant:

- ``ntile_all``: what `GET /v1/admin/stats/users` did before: user_job_quartiles_all (NTILE over every
  user, 50k rows to the client) and the bounds computed in Python;
- ``bounds``: StatsRepository.user_quartiles; ``one_user``: bounds, then user_quartile of a random
  user; ``top100``: bounds, then top_users(limit=100); ``endpoint_all`` / ``endpoint_user``: the new
  endpoint's work when it computes the bounds live (bounds and the page, or bounds and one user, in one
  REPEATABLE READ read-only transaction); ``snapshot_all`` / ``snapshot_user``: the endpoint's work when
  it serves the stats service's snapshot (migration 0015: one row read, then the page or one user);
  ``refresh``: what the stats service spends once a minute to store that snapshot.

Then the same again after 20,000 count_user increments with no VACUUM since (index-only scans then visit
the heap for the pages those updates touched), as a busy stats service leaves the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.transitions import dsn_for
from shared.db.migrate import upgrade
from shared.db.pool import create_pool
from shared.db.repositories import Repositories, create_repositories

DB = "rmbg_bench_quartiles"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.user_quartiles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=60, help="timed runs per variant and phase")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _snapshot_variants(conn: asyncpg.Connection, repos: Repositories, users: list[str],
                       rng: random.Random) -> dict[str, Callable[[], Awaitable[None]]]:
    fresh = timedelta(hours=1)

    async def snapshot_all() -> None:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            q = await repos.stats.user_quartiles_snapshot(conn, max_age=fresh)
            assert q is not None
            await repos.stats.top_users(conn, limit=100, bounds=q.bounds)

    async def snapshot_user() -> None:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            q = await repos.stats.user_quartiles_snapshot(conn, max_age=fresh)
            assert q is not None
            await repos.stats.user_quartile(conn, user_id=rng.choice(users), bounds=q.bounds)

    async def refresh() -> None:
        await repos.stats.refresh_user_quartiles(conn)

    return {"snapshot_all": snapshot_all, "snapshot_user": snapshot_user, "refresh": refresh}


async def phase(conn: asyncpg.Connection, repos: Repositories, users: list[str], runs: int,
                rng: random.Random) -> dict[str, dict[str, float]]:
    async def ntile_all() -> None:
        rows = await repos.jobs.user_job_quartiles(conn)
        bounds: dict[int, list[int]] = {}
        for r in rows:
            b = bounds.setdefault(r.quartile, [r.job_count, r.job_count, 0])
            b[0], b[1], b[2] = min(b[0], r.job_count), max(b[1], r.job_count), b[2] + 1

    async def bounds() -> None:
        await repos.stats.user_quartiles(conn)

    async def one_user() -> None:  # bounds, then the user's row against them
        q = await repos.stats.user_quartiles(conn)
        assert await repos.stats.user_quartile(conn, user_id=rng.choice(users), bounds=q.bounds) is not None

    async def top100() -> None:
        q = await repos.stats.user_quartiles(conn)
        await repos.stats.top_users(conn, limit=100, bounds=q.bounds)

    async def endpoint_all() -> None:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            q = await repos.stats.user_quartiles(conn)
            await repos.stats.top_users(conn, limit=100, bounds=q.bounds)

    async def endpoint_user() -> None:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            q = await repos.stats.user_quartiles(conn)
            await repos.stats.user_quartile(conn, user_id=rng.choice(users), bounds=q.bounds)

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "ntile_all": ntile_all, "bounds": bounds, "one_user": one_user, "top100": top100,
        "endpoint_all": endpoint_all, "endpoint_user": endpoint_user,
        **_snapshot_variants(conn, repos, users, rng),
    }
    await repos.stats.refresh_user_quartiles(conn)
    for fn in variants.values():  # warm-up
        for _ in range(5):
            await fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            t = time.perf_counter()
            await fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {k: {"p50_ms": round(statistics.median(v), 2), "p95_ms": round(pct(v, 0.95), 2)} for k, v in times.items()}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DB}"')
    dsn = dsn_for(args.dsn, DB)
    out: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "users": args.users}
    try:
        await asyncio.to_thread(upgrade, dsn)
        pool = await create_pool(dsn, min_size=1, max_size=1, command_timeout=600)
        try:
            async with pool.acquire() as conn:
                users = [f"user-{i:06d}" for i in range(args.users)]
                loads = [max(1, round(255_000 * (rank + 1) ** -0.8)) for rank in range(args.users)]
                rng.shuffle(users)
                await conn.copy_records_to_table("user_job_counts", records=list(zip(users, loads, strict=True)))
                await conn.execute("VACUUM ANALYZE user_job_counts")
                out["total_jobs"] = sum(loads)
                out["median_user_jobs"] = sorted(loads)[len(loads) // 2]
                repos = create_repositories()
                out["vacuumed"] = await phase(conn, repos, users, args.runs, rng)
                for _ in range(20):
                    await conn.executemany(
                        "INSERT INTO user_job_counts AS c (user_id, jobs) VALUES ($1, 1) "
                        "ON CONFLICT (user_id) DO UPDATE SET jobs = c.jobs + 1",
                        [(rng.choice(users),) for _ in range(1000)])
                out["after_20k_increments"] = await phase(conn, repos, users, args.runs, rng)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        await admin.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
