"""Operator commands that act on the database and object store directly."""

from __future__ import annotations

from datetime import date

from shared.config import BaseServiceSettings
from shared.database import open_database


async def reconcile_day(settings: BaseServiceSettings, day: date) -> str:
    async with open_database(settings.postgres) as db, db.pool.acquire() as conn, conn.transaction():
        await db.stats.reconcile(conn, stat_date=day)
        rows = await db.stats.daily_totals(conn, days=1, today=day)
    return f"reconciled {day}: {rows}"
