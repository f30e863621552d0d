"""python -m bench.transitions: job transitions into PostgreSQL, batched vs one UPDATE per row vs COPY.

    .venv/bin/python -m bench.transitions --dsn postgresql://postgres@127.0.0.1:5432/postgres

Creates a scratch database (rmbg_bench_transitions, migrated to head, dropped at the end unless --keep),
loads pending jobs spread over two monthly partitions, then in interleaved rounds times, each on its own
fresh pending rows:

- ``batch=N``: JobsRepository.mark_completed_many (transitions.sql), N jobs per statement, each batch its
  own autocommit transaction (one commit per batch, as a persister committing a polled batch would);
- ``single``: JobsRepository.mark_completed, one UPDATE per job in its own transaction (the seed design's
  path: the persister's handler today), returning the row with its tags;
- ``copy``: the same completion rows (job_id, created_at and the ten result columns) COPYed into an
  unlogged staging table with copy_records_to_table, in chunks of the largest batch, one transaction each:
  the raw rate at which these rows reach PostgreSQL with no UPDATE at all;
- ``copy-shaped``: the row versions a completion writes (every column of a completed job) COPYed, in the
  same chunks, into a logged table made ``LIKE image_process_jobs INCLUDING ALL`` (its columns, defaults,
  checks and all nine indexes; no triggers) and first filled with as many rows as one month's partition
  holds here. An UPDATE that is not HOT writes exactly that (a new heap tuple and an entry in every
  index; status is in two partial-index predicates, so a status change is never HOT), so this is the rate
  the table's shape allows, and the share of it says what the UPDATE itself (finding the row, the guard,
  the triggers, RETURNING with tags) costs on top.

Prints one JSON object per measurement and a summary (medians over the rounds) as JSON at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg

from shared.contracts.events import CutoutFormat
from shared.db.migrate import upgrade
from shared.db.partitions import ensure_partitions, month_start
from shared.db.pool import create_pool
from shared.db.repositories import create_repositories
from shared.db.repositories.jobs import Completion
from shared.ids import uuid7, uuid7_time

DB = "rmbg_bench_transitions"
_JOB_COLUMNS = (
    "job_id", "created_at", "user_id", "original_ext", "status", "params_hash",
    "content_sha256", "model_name", "original_bytes", "source", "file_size_kb",
)
_STAGING = """
CREATE UNLOGGED TABLE IF NOT EXISTS transition_staging (
    job_id uuid NOT NULL, created_at timestamptz NOT NULL, cutout_format varchar(16),
    mask_bytes integer, processed_bytes integer, model_name varchar(200), model_revision varchar(100),
    processing_time_ms integer, completed_at timestamptz, reused boolean)
"""
# A table of the jobs' shape, without the partitioning (one month's partition, as the UPDATEs write into)
# and without the triggers (a COPY into the jobs table would fire the intake ones, which an UPDATE does not).
_SHAPED = "CREATE TABLE IF NOT EXISTS transition_shaped (LIKE image_process_jobs INCLUDING ALL)"
_SHAPED_COLUMNS = (
    "job_id", "created_at", "user_id", "original_ext", "status", "updated_at", "started_at", "completed_at",
    "processing_time_ms", "file_size_kb", "params_hash", "content_sha256", "model_name",
    "model_revision", "original_bytes", "mask_bytes", "processed_bytes", "source", "attempts",
    "reused_result", "cutout_format",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.transitions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="an existing database to connect to for CREATE/DROP DATABASE")
    p.add_argument("--batches", default="1,10,100,500", help="batch sizes, comma-separated")
    p.add_argument("--rows", type=int, default=20_000, help="rows per batched measurement (default 20,000)")
    p.add_argument("--single-rows", type=int, default=3_000, help="rows per one-UPDATE-per-row measurement")
    p.add_argument("--small-batch-rows", type=int, default=3_000, help="rows for batch sizes below 10")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    p.add_argument("--database", default=DB, help=f"the scratch database's name (default {DB})")
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def dsn_for(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def completion(job_id: UUID, now: datetime) -> Completion:
    return Completion(
        job_id=job_id, cutout_format=CutoutFormat.WEBP,
        mask_bytes=48_213, processed_bytes=311_774, model_name="briaai/RMBG-2.0", model_revision="main",
        processing_time_ms=812, completed_at=now, reused=False,
    )


async def load_pending(conn: asyncpg.Connection, n: int) -> list[UUID]:
    """n pending jobs, half in last month's partition and half in this month's, in id order."""
    now = datetime.now(UTC)
    await ensure_partitions(conn, start=month_start(now - timedelta(days=40)), months=3)
    await conn.execute("INSERT INTO users (user_id, username) VALUES ('bench', 'bench') ON CONFLICT DO NOTHING")
    ids: list[UUID] = []
    records = []
    for i in range(n):
        at = now - timedelta(days=35) + timedelta(seconds=i * 3_000_000 / n)  # ~35 days: two partitions
        job_id = uuid7(at)
        ids.append(job_id)
        records.append((job_id, uuid7_time(job_id), "bench", "jpg", "pending", "p0",
                        secrets.token_bytes(32), "briaai/RMBG-2.0", 123_456, "http", 121))
    await conn.copy_records_to_table("image_process_jobs", records=records, columns=_JOB_COLUMNS)
    await conn.execute("VACUUM ANALYZE image_process_jobs")
    return ids


async def run_batched(conn: asyncpg.Connection, ids: list[UUID], size: int) -> float:
    jobs = create_repositories().jobs
    now = datetime.now(UTC)
    items = [completion(j, now) for j in ids]
    moved = 0
    start = time.perf_counter()
    for lo in range(0, len(items), size):
        moved += len(await jobs.mark_completed_many(conn, items[lo:lo + size]))
    elapsed = time.perf_counter() - start
    assert moved == len(ids), (moved, len(ids))
    return len(ids) / elapsed


async def run_single(conn: asyncpg.Connection, ids: list[UUID]) -> float:
    jobs = create_repositories().jobs
    now = datetime.now(UTC)
    items = [completion(j, now) for j in ids]
    start = time.perf_counter()
    for item in items:
        assert await jobs.mark_completed(conn, **item._asdict()) is not None
    elapsed = time.perf_counter() - start
    return len(ids) / elapsed


async def run_copy(conn: asyncpg.Connection, ids: list[UUID], chunk: int) -> float:
    await conn.execute("TRUNCATE transition_staging")
    now = datetime.now(UTC)
    rows = [(c.job_id, uuid7_time(c.job_id), c.cutout_format.value, c.mask_bytes, c.processed_bytes,
             c.model_name, c.model_revision, c.processing_time_ms, c.completed_at, c.reused)
            for c in (completion(j, now) for j in ids)]
    start = time.perf_counter()
    for lo in range(0, len(rows), chunk):
        await conn.copy_records_to_table("transition_staging", records=rows[lo:lo + chunk])
    elapsed = time.perf_counter() - start
    return len(ids) / elapsed


async def fill_shaped(conn: asyncpg.Connection, rows: int) -> None:
    """transition_shaped with ``rows`` completed rows, so its indexes are as deep as one month's partition."""
    await conn.execute(_SHAPED)
    now = datetime.now(UTC)
    await copy_shaped(conn, [uuid7(now - timedelta(seconds=i)) for i in range(rows)], chunk=10_000)
    await conn.execute("VACUUM ANALYZE transition_shaped")


async def index_shapes(conn: asyncpg.Connection, table: str) -> list[str]:
    """The table's index definitions with the index and table names taken out, sorted: equal lists mean
    the same indexes (columns, methods, predicates)."""
    rows = await conn.fetch(
        "SELECT pg_get_indexdef(i.indexrelid) AS d, c.relname AS index, t.relname AS tab "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE i.indrelid = $1::regclass", table)
    return sorted(r["d"].replace(r["index"], "").replace(r["tab"], "") for r in rows)


def shaped_row(job_id: UUID, c: Completion) -> tuple[Any, ...]:
    """Every column of job ``job_id`` as mark_completed_many leaves it (the pending row's values + ``c``).

    params is left to its default ('{}', as the pending rows have): the pool's jsonb codec has no binary
    form for COPY."""
    return (job_id, uuid7_time(job_id), "bench", "jpg", "completed", c.completed_at, c.completed_at,
            c.completed_at, c.processing_time_ms, 121, "p0", secrets.token_bytes(32), c.model_name,
            c.model_revision, 123_456, c.mask_bytes, c.processed_bytes, "http", 1, c.reused, c.cutout_format.value)


async def copy_shaped(conn: asyncpg.Connection, ids: list[UUID], chunk: int) -> float:
    now = datetime.now(UTC)
    rows = [shaped_row(j, completion(j, now)) for j in ids]
    start = time.perf_counter()
    for lo in range(0, len(rows), chunk):
        await conn.copy_records_to_table("transition_shaped", records=rows[lo:lo + chunk], columns=_SHAPED_COLUMNS)
    elapsed = time.perf_counter() - start
    return len(ids) / elapsed


async def measure(conn: asyncpg.Connection, args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, str]]:
    sizes = [int(s) for s in args.batches.split(",")]
    await conn.execute(_STAGING)
    rows_for = {s: (args.small_batch_rows if s < 10 else args.rows) for s in sizes}
    per_round = sum(rows_for.values()) + args.single_rows
    t0 = time.perf_counter()
    ids = await load_pending(conn, per_round * args.rounds)
    # One month's partition holds about half the pending rows (load_pending splits them over two).
    await fill_shaped(conn, len(ids) // 2)
    partition = await conn.fetchval(
        "SELECT tableoid::regclass::text FROM image_process_jobs WHERE job_id = $1 AND created_at = $2",
        ids[-1], uuid7_time(ids[-1]))
    if await index_shapes(conn, "transition_shaped") != await index_shapes(conn, partition):
        raise RuntimeError(f"transition_shaped's indexes differ from {partition}'s")
    print(json.dumps({"loaded": len(ids), "s": round(time.perf_counter() - t0, 1)}), flush=True)
    settings = {r["name"]: r["setting"] for r in await conn.fetch(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('synchronous_commit', 'fsync', 'wal_level', 'shared_buffers', 'server_version')")}
    # Interleaved: each round takes the next fresh pending rows for every mode in turn, so no mode always
    # runs first, on the oldest rows, or right after the load's VACUUM.
    results: dict[str, list[float]] = {}
    copy_name = f"copy(chunk={max(sizes)})"
    shaped_name = f"copy-shaped(chunk={max(sizes)})"
    pos = 0
    for rnd in range(args.rounds):
        modes = [(f"batch={s}", rows_for[s]) for s in sizes] + [
            ("single", args.single_rows), (copy_name, args.rows), (shaped_name, args.rows)]
        for name, n in modes:
            if name == copy_name:
                rate = await run_copy(conn, ids[:n], max(sizes))  # copies rows, moves none: any ids will do
            elif name == shaped_name:
                # New rows each round (the table keeps them): fresh ids, this month, as the UPDATEs' rows.
                now = datetime.now(UTC)
                rate = await copy_shaped(conn, [uuid7(now - timedelta(seconds=i)) for i in range(n)],
                                         max(sizes))
            else:
                chunk = ids[pos:pos + n]
                pos += n
                if name == "single":
                    rate = await run_single(conn, chunk)
                else:
                    rate = await run_batched(conn, chunk, int(name.split("=")[1]))
            results.setdefault(name, []).append(rate)
            print(json.dumps({"round": rnd + 1, "mode": name, "rows": n, "per_s": round(rate)}), flush=True)
    return results, settings


async def main(args: argparse.Namespace) -> dict[str, Any]:
    admin = await asyncpg.connect(args.dsn)
    db = args.database
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = dsn_for(args.dsn, db)
    try:
        await asyncio.to_thread(upgrade, dsn)
        pool = await create_pool(dsn, min_size=1, max_size=1, command_timeout=600)
        try:
            async with pool.acquire() as conn:
                results, settings = await measure(conn, args)
        finally:
            await pool.close()
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    copy_rate = statistics.median(next(v for k, v in results.items() if k.startswith("copy(")))
    shaped_rate = statistics.median(next(v for k, v in results.items() if k.startswith("copy-shaped")))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, Python {sys.version.split()[0]}",
        "settings": settings,
        "rounds": args.rounds,
        "median_per_s": {k: round(statistics.median(v)) for k, v in results.items()},
        "runs_per_s": {k: [round(x) for x in v] for k, v in results.items()},
        "share_of_copy": {k: round(statistics.median(v) / copy_rate, 3) for k, v in results.items()},
        "share_of_copy_shaped": {k: round(statistics.median(v) / shaped_rate, 3) for k, v in results.items()},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
