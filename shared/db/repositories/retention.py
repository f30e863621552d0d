"""Retention's statements: retiring whole months and trimming the cutoff's own month (SQL in
shared/db/queries/retention.sql; the DDL is in the PL/pgSQL functions of migration 0003).

The order of the work and the object deletions between the steps are rmbg/maintenance/retention.py's.
"""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

from shared.db.models import ContentObjects, RetiredBatch
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
        returns the jobs it held. Their objects are still to be checked: :meth:`retired_unreferenced`."""
        return int(await self._q.retire_month(conn, month=month))

    async def retired_months(self, conn: asyncpg.Connection) -> list[date]:
        """Months detached but not yet dropped (a run interrupted in between), oldest first."""
        return [r["month"] for r in await self._q.retired_months(conn)]

    async def retired_unreferenced(
        self, conn: asyncpg.Connection, *, month: date, after_sha: bytes, limit: int
    ) -> RetiredBatch:
        """About ``limit`` job rows of a detached month after ``after_sha`` (in hash order, no content
        split), checked against the remaining jobs in one statement: the keys no remaining job uses, and
        the count of those kept. Run it under ``lock_objects_exclusive`` and delete before committing."""
        row = await self._q.retired_unreferenced(conn, month=month, after_sha=after_sha, max_rows=limit)
        assert row is not None  # the statement returns one row, also past the month's last hash
        last = row["last_sha"]
        # Several retired jobs of one content name the same keys: the statement leaves the repeats.
        return RetiredBatch(None if last is None else bytes(last), int(row["kept"]), tuple(set(row["doomed"])))

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
        one row per deleted job. Runs in the caller's transaction, under the stats writers' lock (taken
        here: reducing user_job_counts beside a stats batch could otherwise deadlock)."""
        if not conn.is_in_transaction():
            raise RuntimeError("delete_before must run inside a transaction")
        await self._q.lock_stats_writers(conn)
        rows = await self._q.delete_before(conn, cutoff=cutoff, month_from=month_from, max_rows=limit)
        return [_content_objects(r) for r in rows]


def _content_objects(row: asyncpg.Record) -> ContentObjects:
    return ContentObjects(bytes(row["content_sha256"]), tuple(row["paths"]))
