"""Monthly partitions of image_process_jobs and image_tags (names ``<table>_yYYYYmMM``, UTC months).

The DDL lives in the SQL function ``rmbg_ensure_partitions`` (migration 0001): idempotent, and
serialised by a transaction-scoped advisory lock, so any number of services may call it at once.
Migration 0001 creates 6 months back to 3 ahead; the persister's sweeper keeps months ahead created,
and an insert that meets a missing month creates it and retries (repositories/jobs.py).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg

from shared.db.queryset import Queries, default_queries

PARTITIONED_TABLES: tuple[str, ...] = ("image_process_jobs", "image_tags")


def month_start(day: date | datetime) -> date:
    """First day of the (UTC, for datetimes) month holding ``day``."""
    if isinstance(day, datetime):
        if day.tzinfo is None:
            raise ValueError("an aware datetime is required (partitions are by UTC month)")
        day = day.astimezone(UTC).date()
    return date(day.year, day.month, 1)


def partition_name(table: str, month: date) -> str:
    """The partition of ``table`` holding ``month``, e.g. image_process_jobs_y2026m11."""
    return f"{table}_y{month.year:04d}m{month.month:02d}"


async def ensure_partitions(
    conn: asyncpg.Connection, *, start: date, months: int, queries: Queries | None = None
) -> list[str]:
    """Create the missing monthly partitions of both tables for ``months`` months from ``start``'s month.

    Returns the names created (empty when all existed). Runs in its own transaction, or a savepoint
    of the caller's; note that CREATE TABLE ... PARTITION OF locks the parent until that commits.
    """
    if not 1 <= months <= 240:
        raise ValueError(f"months must be 1..240, got {months}")
    q = queries or default_queries()
    async with conn.transaction():
        rows = await q.ensure_partitions(conn, start=start, months=months)
    return [str(row["name"]) for row in rows]


async def list_partitions(conn: asyncpg.Connection, *, table: str, queries: Queries | None = None) -> list[str]:
    """Names of ``table``'s partitions, oldest first (the name sorts by month)."""
    if table not in PARTITIONED_TABLES:
        raise ValueError(f"{table} is not a partitioned table of this schema")
    q = queries or default_queries()
    rows = await q.list_partitions(conn, parent=table)
    return [str(row["name"]) for row in rows]
