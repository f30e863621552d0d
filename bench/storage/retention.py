"""Retention of the oldest month on both schemas: the design's DELETE against our retention code.

The month boundary is a UTC month start, so both remove exactly the same jobs (the baseline keeps its
failed ones, as the design's "delete completed jobs" says). Bloat is measured with pgstattuple: dead
tuples and free space inside the files that remain, and the file sizes before and after.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bench.storage import baseline
from bench.storage.log import log
from rmbg.maintenance.retention import Retention
from shared.db import Database, Queries
from shared.db.pool import create_pool
from shared.storage import ObjectStore

# The leaves of a partitioned table, or the table itself (pg_partition_tree has no row for a plain one).
_LEAVES = """
(SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf
 UNION SELECT $1::regclass WHERE (SELECT relkind FROM pg_class WHERE oid = $1::regclass) = 'r')
"""
_TUPLE = f"""
SELECT sum(s.table_len)::bigint AS table_len, sum(s.tuple_count)::bigint AS tuple_count,
       sum(s.dead_tuple_count)::bigint AS dead_tuple_count, sum(s.dead_tuple_len)::bigint AS dead_tuple_len,
       sum(s.free_space)::bigint AS free_space
FROM {_LEAVES} l, LATERAL pgstattuple(l.relid) s
"""
_SIZE = f"""
SELECT (SELECT COALESCE(sum(pg_table_size(relid)), 0) FROM {_LEAVES} l)::bigint AS heap,
       (SELECT COALESCE(sum(pg_indexes_size(relid)), 0) FROM {_LEAVES} l)::bigint AS idx
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
    out["pkey_before"] = dict(await conn.fetchrow(_LEAF, "image_process_jobs_pkey"))
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
    out["pkey_after"] = dict(await conn.fetchrow(_LEAF, "image_process_jobs_pkey"))
    out["total_s"] = t_tags + t_jobs
    return out


class _TimedQueries(Queries):
    """The project's statements, with the time spent in each (by name) added up."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _add(self, name: str, t0: float) -> None:
        self.seconds[name] += time.perf_counter() - t0
        self.calls[name] += 1

    # The four primitives every typed statement method runs through (shared.db.queryset.Queries).

    async def _rows(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> list[asyncpg.Record]:
        t0 = time.perf_counter()
        try:
            return await super()._rows(name, conn, **params)
        finally:
            self._add(name, t0)

    async def _row(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> asyncpg.Record | None:
        t0 = time.perf_counter()
        try:
            return await super()._row(name, conn, **params)
        finally:
            self._add(name, t0)

    async def _value(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await super()._value(name, conn, **params)
        finally:
            self._add(name, t0)

    async def _status(self, name: str, conn: asyncpg.Connection, /, **params: Any) -> str:
        t0 = time.perf_counter()
        try:
            return await super()._status(name, conn, **params)
        finally:
            self._add(name, t0)


class _NullS3:
    """Stands in for the S3 client: counts the keys retention asks to delete (no object store here)."""

    def __init__(self) -> None:
        self.keys = 0
        self.requests = 0

    async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        self.keys += len(Delete["Objects"])
        return {}


# Which of the project's statements belong to which part of the work (anything else: "other").
_PHASES = {
    "partitions": ("retire_month", "drop_retired", "retired_months", "list_partitions"),
    "object references": ("retired_unreferenced", "retired_objects", "referenced_contents", "contents_in_range",
                          "lock_objects_exclusive", "paths_for_contents"),
    "cutoff month rows": ("delete_before", "count_before"),
    "params counts": ("prune_params_counts",),
}


def _phases(seconds: dict[str, float]) -> dict[str, float]:
    out = dict.fromkeys([*_PHASES, "other"], 0.0)
    for name, s in seconds.items():
        phase = next((p for p, names in _PHASES.items() if name in names), "other")
        out[phase] += s
    return out


async def ours_retention(conn: asyncpg.Connection, dsn: str, cutoff: date) -> dict[str, Any]:
    """The project's retention (rmbg.maintenance.retention.Retention) with a null object store.

    It retires each whole month (DROP of the image_tags partition, per-user counts reduced, DETACH of
    the jobs partition), reads the retired month's object keys to check which contents newer jobs still
    use, drops the detached table, and trims the cutoff's own month row by row (nothing here: the cutoff
    is a month start). Time is split by the statements each part runs. Then the stats service's hourly
    ledger prune is measured on its own (one day of rows), since it is the other DELETE of the design.
    """
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    out: dict[str, Any] = {"cutoff": str(cutoff)}
    tables = ("image_process_jobs", "image_tags")
    out["before"] = {t: await _state(conn, t) for t in tables}
    queries = _TimedQueries()
    s3 = _NullS3()
    pool = await create_pool(dsn, min_size=1, max_size=2, command_timeout=3600)
    try:
        db = Database.over(pool, queries)
        retention = Retention(db, ObjectStore(s3, "bench"))
        report = await retention.run(cutoff=datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC))
    finally:
        await pool.close()
    out["report"] = report.summary()
    out["total_s"] = report.seconds
    out["jobs_removed"] = report.jobs_removed
    out["months"] = report.months_retired
    out["objects_deleted"] = report.objects_deleted
    out["objects_kept_shared"] = report.objects_kept_shared
    out["s3_requests"] = s3.requests
    out["statements"] = {k: {"s": v, "calls": queries.calls[k]} for k, v in queries.seconds.items()}
    out["phases"] = _phases(dict(queries.seconds))
    log(f"ours retention: {report.summary()}; by part: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in out["phases"].items()))
    out["after"] = {t: await _state(conn, t) for t in tables}
    # The aggregates the stats service keeps, after retention.
    jobs = await conn.fetchval("SELECT count(*) FROM image_process_jobs")
    t09 = {"threshold": 0.9}
    out["checks"] = {
        "user_job_counts total == jobs left": await conn.fetchval("SELECT sum(jobs) FROM user_job_counts") == jobs,
        "params_job_count(all days) == COUNT over jobs left": (
            await queries.params_job_count(conn, contains=t09, date_from=date(2000, 1, 1), date_to=date(2100, 1, 1))
            == await conn.fetchval(baseline.PARAMS_COUNT, t09)),
    }
    out["ledger"] = await _ledger_prune(conn, queries)
    return out


async def _ledger_prune(conn: asyncpg.Connection, queries: Queries) -> dict[str, Any]:
    """One day of the stats service's hourly prune_ledger (a DELETE), and what it leaves in the file."""
    first = await conn.fetchval("SELECT min(stat_date) FROM stats_ledger")
    out: dict[str, Any] = {"before": await _state(conn, "stats_ledger")}
    t0 = time.perf_counter()
    out["rows"] = int(await queries.prune_ledger(conn, before=first + timedelta(days=1)))
    out["s"] = time.perf_counter() - t0
    out["after"] = await _state(conn, "stats_ledger")
    _, out["vacuum_s"] = await _timed(conn, "VACUUM stats_ledger")
    out["after_vacuum"] = await _state(conn, "stats_ledger")
    log(f"ours: prune_ledger of one day: {out['rows']:,} rows in {out['s']:.2f} s")
    return out
