"""Create the two bench databases and fill them with the same generated jobs.

Loading is bulk work: the indexes and keys of the big tables are dropped first (their definitions read
back from the catalog), the rows go in with binary COPY and INSERT ... SELECT from a staging table,
then every index and constraint is rebuilt from those definitions. The final schema is exactly what
the migrations (ours) and the design (baseline) define; only the order of work differs, so indexes
are as compact as a fresh build (an index grown row by row with random keys is larger, see the report).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import numpy.typing as npt

from bench.storage import baseline
from bench.storage.copy import Column, chunks, encode, timestamptz
from bench.storage.generate import (
    ERRORS,
    MODEL_NAME,
    MODEL_REVISIONS,
    JobsData,
    model_slugs,
    param_combos,
    tag_names,
)
from bench.storage.log import log
from services.stats.settings import StatsOptions
from shared.db.migrate import upgrade
from shared.db.partitions import ensure_partitions, month_start
from shared.db.pool import init_connection

DB_PREFIX = "rmbg_bench"  # the two databases are <prefix>_ours and <prefix>_baseline


def bench_databases(prefix: str = DB_PREFIX) -> tuple[str, str]:
    return f"{prefix}_ours", f"{prefix}_baseline"


OURS_DB, BASELINE_DB = bench_databases()
CHUNK = 500_000

STAGE = (
    Column("job7", "uuid"),
    Column("job4", "uuid"),
    Column("created_at", "timestamptz"),
    Column("user_no", "integer"),
    Column("status", "smallint"),
    Column("started_off", "integer"),
    Column("finished_off", "integer"),
    Column("processing_ms", "integer"),
    Column("width", "integer"),
    Column("height", "integer"),
    Column("file_kb", "integer"),
    Column("original_bytes", "integer"),
    Column("ext_code", "smallint"),
    Column("params_code", "smallint"),
    Column("sha", "bytea32"),
    Column("mask_bytes", "integer"),
    Column("processed_bytes", "integer"),
    Column("model_code", "smallint"),
    Column("source_code", "smallint"),
    Column("attempts", "smallint"),
    Column("reused", "boolean"),
    Column("error_code", "smallint"),
)

# Staging rows with their derived values, shared by both INSERTs.
_STAGED = """
SELECT st.*, encode(st.sha, 'hex') AS h, 'u' || lpad(st.user_no::text, 6, '0') AS user_id,
       (ARRAY['pending', 'processing', 'completed', 'failed'])[st.status + 1] AS status_name,
       (ARRAY['jpg', 'png', 'webp'])[st.ext_code + 1] AS ext,
       CASE WHEN st.started_off >= 0 THEN st.created_at + st.started_off * interval '1 millisecond' END
           AS started_at,
       CASE WHEN st.finished_off >= 0 THEN st.created_at + st.finished_off * interval '1 millisecond' END
           AS finished_at
FROM bench_stage st
"""

# Ours stores no object keys (migration 0014): the original's extension, and a completed job's cut-out
# format, are what the keys derive from (shared.storage.keys.ObjectKeys).
OURS_JOBS = f"""
INSERT INTO image_process_jobs (
    job_id, created_at, user_id, original_ext, cutout_format, status, updated_at,
    started_at, completed_at, processing_time_ms, image_width, image_height, file_size_kb, params,
    params_hash, error_message, content_sha256, model_name, model_revision, original_bytes, mask_bytes,
    processed_bytes, source, attempts, reused_result)
SELECT s.job7, s.created_at, s.user_id, s.ext,
       CASE WHEN s.status = 2 THEN p.cutout_format END,
       s.status_name, COALESCE(s.finished_at, s.started_at, s.created_at), s.started_at, s.finished_at,
       NULLIF(s.processing_ms, -1), NULLIF(s.width, 0), NULLIF(s.height, 0), s.file_kb,
       p.params, p.params_hash, e.message, s.sha, m.model_name,
       CASE WHEN s.status = 2 THEN m.revision END, s.original_bytes,
       NULLIF(s.mask_bytes, -1), NULLIF(s.processed_bytes, -1),
       (ARRAY['http', 'upload'])[s.source_code + 1], s.attempts, s.reused
FROM ({_STAGED}) s
JOIN bench_params p ON p.code = s.params_code
JOIN bench_models m ON m.code = s.model_code
LEFT JOIN bench_errors e ON e.code = s.error_code
"""

# The design names no object keys; these are per job (nothing is shared), three PNGs.
BASELINE_JOBS = f"""
INSERT INTO image_process_jobs (
    job_id, user_id, original_path, mask_path, processed_path, status, created_at, completed_at,
    processing_time_ms, image_width, image_height, file_size_kb, params, error_message)
SELECT s.job4, s.user_id,
       'original/' || s.user_id || '/' || s.job4 || '.' || s.ext,
       CASE WHEN s.status = 2 THEN 'mask/' || s.user_id || '/' || s.job4 || '.png' END,
       CASE WHEN s.status = 2 THEN 'processed/' || s.user_id || '/' || s.job4 || '.png' END,
       s.status_name, s.created_at, s.finished_at, NULLIF(s.processing_ms, -1),
       NULLIF(s.width, 0), NULLIF(s.height, 0), s.file_kb, p.params, e.message
FROM ({_STAGED}) s
JOIN bench_params p ON p.code = s.params_code
LEFT JOIN bench_errors e ON e.code = s.error_code
"""

USERS = """
INSERT INTO users (user_id, username, email, created_at, last_login)
SELECT 'u' || lpad(n::text, 6, '0'), 'user' || n, 'user' || n || '@example.com',
       $1::timestamptz - make_interval(days => (n * 7919 % 720)::int, secs => n * 104729 % 86400),
       $2::timestamptz - make_interval(secs => n * 15485863 % (86400 * 30))
FROM generate_series(1, $3::bigint) AS n
"""

# Ours stores emails encrypted (migration 0008, docs/access.md): a Fernet token of a 20-character address
# is 120 base64 characters, stored as 120 bytes; the digest is 32. Same users, same sizes as real rows.
OURS_USERS = """
INSERT INTO users (user_id, username, email_encrypted, email_digest, created_at, last_login)
SELECT 'u' || lpad(n::text, 6, '0'), 'user' || n,
       convert_to(rpad(encode(sha256(('user' || n || '@example.com')::bytea), 'base64'), 120, 'x'), 'UTF8'),
       sha256(('user' || n || '@example.com')::bytea),
       $1::timestamptz - make_interval(days => (n * 7919 % 720)::int, secs => n * 104729 % 86400),
       $2::timestamptz - make_interval(secs => n * 15485863 % (86400 * 30))
FROM generate_series(1, $3::bigint) AS n
"""

# What the stats service would have counted: one accepted per job, one completed/failed per finished
# job, each on the UTC day of created_at (services/stats/handler.py), with its ledger rows.
OURS_STATS = """
INSERT INTO processing_stats (stat_date, total_jobs, completed_jobs, failed_jobs, sum_processing_time_ms)
SELECT (created_at AT TIME ZONE 'UTC')::date, count(*),
       count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
       COALESCE(sum(processing_time_ms) FILTER (WHERE status = 'completed'), 0)
FROM image_process_jobs
GROUP BY 1
"""
# The ledger holds only the days the stats service still counts (StatsOptions.ledger_days; it prunes
# older days hourly).
OURS_LEDGER = """
INSERT INTO stats_ledger (stat_date, job_id, kind)
SELECT (created_at AT TIME ZONE 'UTC')::date, job_id, 'accepted' FROM image_process_jobs
WHERE created_at >= $1
UNION ALL
SELECT (created_at AT TIME ZONE 'UTC')::date, job_id, status FROM image_process_jobs
WHERE status IN ('completed', 'failed') AND created_at >= $1
"""
# The stats service's other two aggregates (migrations 0004 and 0005), counted on `accepted`: the same
# statements as those migrations' backfills. Ordered by day, as the stats service writes them (a day's
# rows appear as its jobs arrive): in hash-aggregate order the last 7 days' 1,067 rows sat on 335 of 359
# pages at 10M jobs, and params_share read them all (about 1.5 ms); by day they take 17 pages.
OURS_PARAMS_COUNTS = """
INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs)
SELECT (created_at AT TIME ZONE 'UTC')::date, params_hash, min(params::text)::jsonb, count(*)
FROM image_process_jobs
GROUP BY 1, 2
ORDER BY 1, 2
"""
OURS_USER_COUNTS = (
    "INSERT INTO user_job_counts (user_id, jobs) SELECT user_id, count(*) FROM image_process_jobs GROUP BY 1"
)

# Bulk-load session settings. Parallel workers off: two loads run side by side on a shared 2-core box.
LOAD_SETTINGS = (
    "SET maintenance_work_mem = '1GB'",
    "SET work_mem = '256MB'",
    "SET max_parallel_workers_per_gather = 0",
    "SET max_parallel_maintenance_workers = 0",
    "SET synchronous_commit = off",
)


def dsn_for(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def connect(dsn: str, *, jit_off: bool = False) -> asyncpg.Connection:
    """A connection in UTC; ``jit_off`` as the services' pools connect (shared.db.pool.create_pool)."""
    settings = {"timezone": "UTC", **({"jit": "off"} if jit_off else {})}
    conn = await asyncpg.connect(dsn, server_settings=settings)
    await init_connection(conn)  # jsonb as Python values, as the services' pool does
    return conn


async def recreate_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Stripped:
    """The keys and indexes dropped for the load, as the statements that recreate them."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # primary keys and unique constraints
    indexes: list[tuple[str, str]] = field(default_factory=list)
    foreign: list[tuple[str, str]] = field(default_factory=list)


async def strip(conn: asyncpg.Connection, tables: list[str]) -> Stripped:
    """Drop the keys, indexes and foreign keys of ``tables``; return how to put them back."""
    out = Stripped()
    drops_fk: list[str] = []
    drops_ix: list[str] = []
    drops_key: list[str] = []
    for table in tables:
        for row in await conn.fetch(
            "SELECT conname, contype::text AS contype, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = $1::regclass AND conparentid = 0 AND contype IN ('p', 'u', 'f') "
            "ORDER BY contype DESC, conname",
            table,
        ):
            add = f'ALTER TABLE {table} ADD CONSTRAINT "{row["conname"]}" {row["def"]}'
            drop = f'ALTER TABLE {table} DROP CONSTRAINT "{row["conname"]}"'
            if row["contype"] == "f":
                out.foreign.append((f"{table}.{row['conname']}", add))
                drops_fk.append(drop)
            else:
                out.keys.append((f"{table}.{row['conname']}", add))
                drops_key.append(drop)
        for row in await conn.fetch(
            """
            SELECT i.relname, pg_get_indexdef(i.oid) AS def
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = $1::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                              WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid
                                AND c.contype IN ('p', 'u', 'x'))
            ORDER BY i.relname
            """,
            table,
        ):
            out.indexes.append((str(row["relname"]), str(row["def"]).replace(" ON ONLY ", " ON ")))
            drops_ix.append(f'DROP INDEX "{row["relname"]}"')
    for stmt in [*drops_fk, *drops_ix, *drops_key]:
        await conn.execute(stmt)
    return out


async def restore(conn: asyncpg.Connection, stripped: Stripped, timings: dict[str, float], db: str) -> None:
    for label, stmt in [*stripped.keys, *stripped.indexes, *stripped.foreign]:
        t0 = time.perf_counter()
        await conn.execute(stmt)
        timings[f"build {label}"] = time.perf_counter() - t0
        log(f"[{db}] built {label} in {timings[f'build {label}']:.1f} s")


async def _lookups(conn: asyncpg.Connection) -> None:
    combos = param_combos()
    await conn.execute(
        """
        CREATE TABLE bench_params (code smallint PRIMARY KEY, params jsonb NOT NULL, params_hash text NOT NULL,
                                   threshold_tag text NOT NULL, cutout_format text NOT NULL,
                                   cutout_ext text NOT NULL);
        CREATE TABLE bench_models (code smallint PRIMARY KEY, model_name text NOT NULL, revision text NOT NULL,
                                   slug text NOT NULL);
        CREATE TABLE bench_errors (code smallint PRIMARY KEY, message text NOT NULL);
        """
    )
    await conn.executemany(
        "INSERT INTO bench_params VALUES ($1, $2, $3, $4, $5, $6)",
        [(c.code, c.params, c.params_hash, c.threshold_tag, c.cutout_format, c.cutout_ext) for c in combos],
    )
    await conn.executemany(
        "INSERT INTO bench_models VALUES ($1, $2, $3, $4)",
        [(i, MODEL_NAME, rev, slug) for i, (rev, slug) in enumerate(zip(MODEL_REVISIONS, model_slugs(), strict=True))],
    )
    await conn.executemany(
        "INSERT INTO bench_errors VALUES ($1, $2)", [(i, m) for i, m in enumerate(ERRORS) if i > 0]
    )
    cols = ", ".join(f"{c.name} {c.sql_type} NOT NULL" for c in STAGE)
    await conn.execute(f"CREATE UNLOGGED TABLE bench_stage ({cols})")


def _stage_payload(data: JobsData, part: slice) -> bytes:
    d = data
    values: list[npt.NDArray[np.generic]] = [
        d.job7[part], d.job4[part], timestamptz(d.created_ms[part]), d.user_no[part], d.status[part],
        d.started_off_ms[part], d.finished_off_ms[part], d.processing_ms[part], d.width[part], d.height[part],
        d.file_kb[part], d.original_bytes[part], d.ext_code[part], d.params_code[part], d.sha[part],
        d.mask_bytes[part], d.processed_bytes[part], d.model_code[part], d.source_code[part],
        d.attempts[part], d.reused[part].astype(np.uint8), d.error_code[part],
    ]
    return encode(STAGE, values)


_OURS_TAG_COLS = (Column("job_id", "uuid"), Column("created_at", "timestamptz"), Column("tag_id", "integer"))
_BASE_TAG_COLS = (Column("job_id", "uuid"), Column("tag_id", "integer"))


async def _pieces(payload: bytes, size: int = 4 << 20) -> AsyncIterator[bytes]:
    """asyncpg reads a bytes source as a file name; an async iterable of pieces is streamed as is."""
    view = memoryview(payload)
    for lo in range(0, len(view), size):
        yield bytes(view[lo : lo + size])


async def _copy_both(ours: asyncpg.Connection, base: asyncpg.Connection, data: JobsData) -> None:
    """Stage the jobs and load image_tags in both databases, chunk by chunk, the same bytes for both."""
    for part in chunks(data.n, CHUNK):
        payload = _stage_payload(data, part)
        await asyncio.gather(
            ours.copy_to_table("bench_stage", source=_pieces(payload), format="binary"),
            base.copy_to_table("bench_stage", source=_pieces(payload), format="binary"),
        )
    log(f"staged {data.n:,} jobs in both databases")
    for part in chunks(int(data.tag_job.shape[0]), CHUNK * 2):
        rows = data.tag_job[part]
        ours_payload = encode(_OURS_TAG_COLS, [data.job7[rows], timestamptz(data.created_ms[rows]), data.tag_id[part]])
        base_payload = encode(_BASE_TAG_COLS, [data.job4[rows], data.tag_id[part]])
        await asyncio.gather(
            ours.copy_to_table("image_tags", source=_pieces(ours_payload), format="binary",
                               columns=[c.name for c in _OURS_TAG_COLS]),
            base.copy_to_table("image_tags", source=_pieces(base_payload), format="binary",
                               columns=[c.name for c in _BASE_TAG_COLS]),
        )
    log(f"copied {data.tag_job.shape[0]:,} image_tags rows into both databases")


async def _timed(conn: asyncpg.Connection, timings: dict[str, float], db: str, label: str, sql: str,
                 *args: object) -> str:
    t0 = time.perf_counter()
    status = str(await conn.execute(sql, *args))
    timings[label] = time.perf_counter() - t0
    log(f"[{db}] {label}: {status} in {timings[label]:.1f} s")
    return status


def ledger_horizon(end: datetime) -> datetime:
    """The first instant whose day the stats ledger still holds at ``end``."""
    day = end.astimezone(UTC).date() - timedelta(days=StatsOptions().ledger_days)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _finish(conn: asyncpg.Connection, db: str, sql_jobs: str, stripped: Stripped, ours: datetime | None,
                  timings: dict[str, float]) -> None:
    """Expand the staging rows; for ours (``ours`` = the data's end) also fill the stats aggregates."""
    await _timed(conn, timings, db, "analyze staging", "ANALYZE bench_stage")
    await _timed(conn, timings, db, "insert jobs", sql_jobs)
    if ours is not None:
        await _timed(conn, timings, db, "fill processing_stats", OURS_STATS)
        await _timed(conn, timings, db, "fill stats_ledger", OURS_LEDGER, ledger_horizon(ours))
        await _timed(conn, timings, db, "fill params_daily_counts", OURS_PARAMS_COUNTS)
        await _timed(conn, timings, db, "fill user_job_counts", OURS_USER_COUNTS)
    await conn.execute("DROP TABLE bench_stage, bench_params, bench_models, bench_errors")
    await restore(conn, stripped, timings, db)
    await _timed(conn, timings, db, "vacuum analyze", "VACUUM (ANALYZE)")


@dataclass
class LoadResult:
    timings: dict[str, dict[str, float]]
    seconds: float


async def load(admin_dsn: str, data: JobsData, *, ours_db: str = OURS_DB, base_db: str = BASELINE_DB) -> LoadResult:
    """Create both databases afresh and fill them with ``data``."""
    t_start = time.perf_counter()
    ours_dsn, base_dsn = dsn_for(admin_dsn, ours_db), dsn_for(admin_dsn, base_db)
    await asyncio.gather(recreate_database(admin_dsn, ours_db), recreate_database(admin_dsn, base_db))
    await asyncio.to_thread(upgrade, ours_dsn)
    log("created both databases; ours migrated to head")
    ours, base = await connect(ours_dsn), await connect(base_dsn)
    try:
        for stmt in baseline.DDL:
            await base.execute(stmt)
        first = month_start(data.start)
        last = month_start(data.end)
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        created = await ensure_partitions(ours, start=first, months=months)
        log(f"ours: partitions for {first:%Y-%m}..{last:%Y-%m} ({len(created)} created beyond the migration's)")
        for conn in (ours, base):
            for stmt in LOAD_SETTINGS:
                await conn.execute(stmt)
            await _lookups(conn)
            await conn.execute(OURS_USERS if conn is ours else USERS, data.start, data.end, data.shape.users)
            names = tag_names(data.shape.tags, data.shape.seed)
            await conn.copy_records_to_table("tags", records=list(enumerate(names, start=1)),
                                             columns=["tag_id", "name"])
            await conn.execute("SELECT setval('tags_tag_id_seq', $1)", len(names))
        stripped_ours = await strip(ours, ["image_tags", "image_process_jobs", "stats_ledger"])
        stripped_base = await strip(base, ["image_tags", "image_process_jobs"])
        await _copy_both(ours, base, data)
        timings: dict[str, dict[str, float]] = {"ours": {}, "baseline": {}}
        await asyncio.gather(
            _finish(ours, "ours", OURS_JOBS, stripped_ours, data.end, timings["ours"]),
            _finish(base, "baseline", BASELINE_JOBS, stripped_base, None, timings["baseline"]),
        )
    finally:
        await ours.close()
        await base.close()
    return LoadResult(timings=timings, seconds=time.perf_counter() - t_start)


def utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()
