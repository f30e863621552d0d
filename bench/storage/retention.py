"""Retention of the oldest month on both schemas: the design's DELETE against our partition drop.

The month boundary is a UTC month start, so both remove exactly the same jobs (the baseline keeps its
failed ones, as the design's "delete completed jobs" says). Bloat is measured with pgstattuple: dead
tuples and free space inside the files that remain, and the file sizes before and after.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bench.storage import baseline
from bench.storage.log import log
from shared.db.partitions import list_partitions, partition_name

_TUPLE = """
SELECT sum(s.table_len)::bigint AS table_len, sum(s.tuple_count)::bigint AS tuple_count,
       sum(s.dead_tuple_count)::bigint AS dead_tuple_count, sum(s.dead_tuple_len)::bigint AS dead_tuple_len,
       sum(s.free_space)::bigint AS free_space
FROM pg_partition_tree($1::regclass) p, LATERAL pgstattuple(p.relid) s
WHERE p.isleaf
"""
_SIZE = """
SELECT (SELECT COALESCE(sum(pg_table_size(relid)), 0) FROM pg_partition_tree($1::regclass))::bigint AS heap,
       (SELECT COALESCE(sum(pg_indexes_size(relid)), 0) FROM pg_partition_tree($1::regclass))::bigint AS idx
"""
_LEAF = "SELECT avg_leaf_density, leaf_fragmentation FROM pgstatindex($1::regclass)"


def cutoff_for(first: datetime) -> date:
    """The first UTC month start that leaves at least 20 days of data before it: one month of jobs."""
    day = first.astimezone(UTC).date()
    month = date(day.year, day.month, 1)
    while True:
        month = (month + timedelta(days=32)).replace(day=1)
        if (month - day).days >= 20:
            return month


async def _state(conn: asyncpg.Connection, table: str) -> dict[str, Any]:
    row = await conn.fetchrow(_TUPLE, table)
    size = await conn.fetchrow(_SIZE, table)
    assert row is not None and size is not None
    out = {**dict(row), **dict(size)}
    length = out["table_len"] or 1
    out["dead_pct"] = 100.0 * (out["dead_tuple_len"] or 0) / length
    out["free_pct"] = 100.0 * (out["free_space"] or 0) / length
    return out


async def _timed(conn: asyncpg.Connection, sql: str, *args: Any) -> tuple[str, float]:
    t0 = time.perf_counter()
    status = await conn.execute(sql, *args)
    return str(status), time.perf_counter() - t0


async def baseline_retention(conn: asyncpg.Connection, cutoff: date) -> dict[str, Any]:
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    at = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)
    out: dict[str, Any] = {"cutoff": str(cutoff)}
    out["before"] = {t: await _state(conn, t) for t in ("image_process_jobs", "image_tags")}
    out["pkey_before"] = dict(await conn.fetchrow(_LEAF, "image_process_jobs_pkey"))  # type: ignore[arg-type]
    status_tags, t_tags = await _timed(conn, baseline.RETENTION_TAGS, at)
    log(f"baseline retention: {status_tags} from image_tags in {t_tags:.1f} s")
    status_jobs, t_jobs = await _timed(conn, baseline.RETENTION_JOBS, at)
    log(f"baseline retention: {status_jobs} from image_process_jobs in {t_jobs:.1f} s")
    out["delete_tags"] = {"status": status_tags, "s": t_tags}
    out["delete_jobs"] = {"status": status_jobs, "s": t_jobs}
    out["after_delete"] = {t: await _state(conn, t) for t in ("image_process_jobs", "image_tags")}
    _, t_vac = await _timed(conn, "VACUUM image_process_jobs, image_tags")
    log(f"baseline retention: VACUUM in {t_vac:.1f} s")
    out["vacuum_s"] = t_vac
    out["after_vacuum"] = {t: await _state(conn, t) for t in ("image_process_jobs", "image_tags")}
    out["pkey_after"] = dict(await conn.fetchrow(_LEAF, "image_process_jobs_pkey"))  # type: ignore[arg-type]
    out["total_s"] = t_tags + t_jobs
    return out


async def ours_retention(conn: asyncpg.Connection, cutoff: date) -> dict[str, Any]:
    """Detach (CONCURRENTLY) and drop every monthly partition that ends on or before ``cutoff``.

    image_tags first: its partition references the jobs partition. The stats ledger has no project
    code for retention yet; its DELETE of the same days is measured separately.
    """
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    out: dict[str, Any] = {"cutoff": str(cutoff), "steps": []}
    out["before"] = {t: await _state(conn, t) for t in ("image_process_jobs", "image_tags", "stats_ledger")}
    names = await list_partitions(conn, table="image_process_jobs")
    months: list[date] = []
    for name in names:
        month = date(int(name[-7:-3]), int(name[-2:]), 1)
        if (month + timedelta(days=32)).replace(day=1) <= cutoff:
            months.append(month)
    rows = 0
    total = 0.0
    for month in months:
        jobs_part = partition_name("image_process_jobs", month)
        rows += int(await conn.fetchval(f"SELECT count(*) FROM {jobs_part}"))
        for table in ("image_tags", "image_process_jobs"):
            part = partition_name(table, month)
            for sql in (f"ALTER TABLE {table} DETACH PARTITION {part} CONCURRENTLY", f"DROP TABLE {part}"):
                status, took = await _timed(conn, sql)
                total += took
                out["steps"].append({"sql": sql, "s": took})
                log(f"ours retention: {sql}: {took * 1000:.0f} ms")
    out["jobs_removed"] = rows
    out["partitions_s"] = total
    status, took = await _timed(conn, "DELETE FROM stats_ledger WHERE stat_date < $1", cutoff)
    out["ledger_delete"] = {"status": status, "s": took}
    log(f"ours retention: stats_ledger {status} in {took:.1f} s")
    out["after"] = {t: await _state(conn, t) for t in ("image_process_jobs", "image_tags", "stats_ledger")}
    _, t_vac = await _timed(conn, "VACUUM stats_ledger")
    out["ledger_vacuum_s"] = t_vac
    out["ledger_after_vacuum"] = await _state(conn, "stats_ledger")
    return out
