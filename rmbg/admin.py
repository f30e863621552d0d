"""Operator commands that act on the database and object store directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

from rmbg.maintenance.fsck import Fsck, FsckReport
from rmbg.maintenance.retention import Retention, RetentionReport
from shared.config import BaseServiceSettings
from shared.db import Database, open_database
from shared.storage import ObjectStore, open_object_store


@contextlib.asynccontextmanager
async def _open(settings: BaseServiceSettings) -> AsyncIterator[tuple[Database, ObjectStore]]:
    async with open_database(settings.postgres) as db, open_object_store(settings.s3) as store:
        yield db, store


async def reconcile_day(settings: BaseServiceSettings, day: date) -> str:
    async with open_database(settings.postgres) as db, db.pool.acquire() as conn, conn.transaction():
        row = await db.stats.reconcile(conn, stat_date=day)
    return f"reconciled {day}: {row.model_dump(mode='json')}"


async def retention(settings: BaseServiceSettings, *, older_than_days: int, dry_run: bool) -> RetentionReport:
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    async with _open(settings) as (db, store):
        return await Retention(db, store).run(cutoff=cutoff, dry_run=dry_run)


async def fsck(settings: BaseServiceSettings, *, repair: bool, grace_s: int) -> FsckReport:
    async with _open(settings) as (db, store):
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsck") as executor:
            return await Fsck(db, store, executor).run(repair=repair, grace=timedelta(seconds=grace_s))
