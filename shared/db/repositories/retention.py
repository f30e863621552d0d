"""Retention's statements: retiring whole months and trimming the cutoff's own month (SQL in
shared/db/queries/retention.sql; the DDL is in the PL/pgSQL functions of migration 0003).

The order of the work and the object deletions between the steps are rmbg/maintenance/retention.py's.
"""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

from shared.db.models import ContentObjects, DoomedMonth, RetiredBatch
from shared.db.partitions import list_partitions
from shared.db.queryset import Queries, default_queries


class RetentionRepository:
    def __init__(self, queries: Queries | None = None) -> None:
        self._q = queries or default_queries()

    async def job_partitions(self, conn: asyncpg.Connection) -> list[str]:
        """The monthly partitions of image_process_jobs, oldest first."""
        return await list_partitions(conn, table="image_process_jobs", queries=self._q)

    async def retire_month(self, conn: asyncpg.Connection, *, month: date) -> int:
        """Drop the month's tags partition, reduce the users' job counts, detach its jobs partition;
        returns the jobs it held. Their objects are still to be checked: :meth:`doom_month`."""
        return int(await self._q.retire_month(conn, month=month))

    async def retired_months(self, conn: asyncpg.Connection) -> list[date]:
        """Months detached but not yet dropped (a run interrupted in between), oldest first."""
        return [r["month"] for r in await self._q.retired_months(conn)]

    async def try_lock_run(self, conn: asyncpg.Connection) -> bool:
        """Take the session lock of a retention run on ``conn`` if no other run holds it."""
        return bool(await self._q.lock_retention(conn))

    async def unlock_run(self, conn: asyncpg.Connection) -> None:
        await self._q.unlock_retention(conn)

    async def mark_run(self, conn: asyncpg.Connection, *, month: date) -> None:
        """Clear what an earlier run left and mark ``month``'s: from its commit on, every insert of jobs
        claims their contents. Run it in a transaction of its own."""
        await self._q.clear_run(conn)
        await self._q.mark_run(conn, month=month)

    async def end_run(self, conn: asyncpg.Connection) -> None:
        """Clear the run's mark, claims and doomed keys."""
        await self._q.clear_run(conn)
        await self._q.empty_doomed(conn)

    async def doom_month(self, conn: asyncpg.Connection, *, month: date) -> DoomedMonth:
        """Check a detached month against the remaining jobs in one statement, without the objects lock;
        the unused contents and their keys wait in retention_doomed for :meth:`doomed_batch`."""
        row = await self._q.doom_month(conn, month=month)
        assert row is not None  # the function returns one row
        return DoomedMonth(doomed=int(row["doomed"]), kept=int(row["kept"]))

    async def doomed_batch(self, conn: asyncpg.Connection, *, after_sha: bytes, limit: int) -> RetiredBatch:
        """Up to ``limit`` doomed contents after ``after_sha``: the keys of those no job inserted since the
        run's mark has claimed, and the count of the claimed ones' keys. Run it under
        ``lock_objects_exclusive`` and delete before committing."""
        row = await self._q.doomed_batch(conn, after_sha=after_sha, max_contents=limit)
        assert row is not None  # the statement returns one row, also past the last content
        last = row["last_sha"]
        return RetiredBatch(None if last is None else bytes(last), int(row["kept"]), tuple(row["doomed"]))

    async def drop_retired(self, conn: asyncpg.Connection, *, month: date) -> None:
        await self._q.drop_retired(conn, month=month)

    async def count_month(self, conn: asyncpg.Connection, *, month_from: datetime, month_to: datetime) -> int:
        return int(await self._q.count_month(conn, month_from=month_from, month_to=month_to))

    async def count_before(self, conn: asyncpg.Connection, *, cutoff: datetime, month_from: datetime) -> int:
        """Jobs of the cutoff's own month (from ``month_from``) created before ``cutoff``."""
        return int(await self._q.count_before(conn, cutoff=cutoff, month_from=month_from))

    async def delete_before(
        self, conn: asyncpg.Connection, *, cutoff: datetime, month_from: datetime, limit: int
    ) -> list[ContentObjects]:
        """Delete up to ``limit`` of those jobs, oldest first, with their tags and their users' counts;
        one row per deleted job."""
        rows = await self._q.delete_before(conn, cutoff=cutoff, month_from=month_from, max_rows=limit)
        return [_content_objects(r) for r in rows]


def _content_objects(row: asyncpg.Record) -> ContentObjects:
    return ContentObjects(bytes(row["content_sha256"]), tuple(row["paths"]))
