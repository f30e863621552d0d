"""The stats service's quartile refresh (services/stats/main.py refresh_quartiles) on a database of its own:
it stores the bounds at start and again every interval, and stops when asked."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import SecretStr

from services.stats.main import refresh_quartiles
from services.stats.settings import StatsOptions
from shared.config import PostgresSettings
from shared.db import open_database
from tests.support.databases import migrated_database


async def test_refresh_stores_the_bounds_until_stopped() -> None:
    async with migrated_database("rmbg_statsq") as dsn, open_database(PostgresSettings(dsn=SecretStr(dsn))) as db:
        async with db.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO user_job_counts (user_id, jobs) VALUES ($1, $2)", [(f"u{i}", i + 1) for i in range(10)]
            )
        stop = asyncio.Event()
        task = asyncio.create_task(refresh_quartiles(db, StatsOptions(quartiles_interval_s=0.2), stop))
        async with db.pool.acquire() as conn:
            for _ in range(100):
                first = await db.stats.user_quartiles_snapshot(conn, max_age=timedelta(minutes=1))
                if first is not None:
                    break
                await asyncio.sleep(0.05)
            assert first is not None and first.total_users == 10
            assert first.bounds == (await db.stats.user_quartiles(conn)).bounds
            await conn.execute("INSERT INTO user_job_counts (user_id, jobs) VALUES ('late', 99)")
            for _ in range(100):
                later = await db.stats.user_quartiles_snapshot(conn, max_age=timedelta(minutes=1))
                if later is not None and later.total_users == 11:
                    break
                await asyncio.sleep(0.05)
            assert later is not None and later.total_users == 11 and later.as_of > first.as_of  # type: ignore[operator]
        stop.set()
        await asyncio.wait_for(task, 5)
