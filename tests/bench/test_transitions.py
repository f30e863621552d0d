"""bench/transitions, tiny: every mode runs once on a few hundred rows in a database of its own; the
figures are not checked, only that each mode moved or copied its rows and the shares are computed. The
shaped COPY's table is checked to carry a jobs partition's indexes (what makes it the row-writing floor)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import asyncpg

from bench.transitions import index_shapes, main, parse_args
from shared.db.partitions import ensure_partitions, month_start
from tests.support.databases import LOCAL_ADMIN_DSN, migrated_database

MODES = {"batch=1", "batch=10", "batch=100", "single", "copy(chunk=100)", "copy-shaped(chunk=100)"}


async def test_a_small_run_times_every_mode() -> None:
    database = f"rmbg_smoke_transitions_{secrets.token_hex(4)}"
    result = await main(parse_args([
        "--dsn", LOCAL_ADMIN_DSN, "--database", database, "--rounds", "1",
        "--batches", "1,10,100", "--rows", "300", "--single-rows", "50", "--small-batch-rows", "50",
    ]))
    assert set(result["median_per_s"]) == MODES
    assert all(rate > 0 for rate in result["median_per_s"].values())
    assert result["share_of_copy"]["copy(chunk=100)"] == 1.0
    assert result["share_of_copy_shaped"]["copy-shaped(chunk=100)"] == 1.0
    conn = await asyncpg.connect(LOCAL_ADMIN_DSN)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", database) == 0
    finally:
        await conn.close()


async def test_index_shapes_tell_a_missing_index() -> None:
    async with migrated_database("rmbg_test_shapes") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await ensure_partitions(conn, start=month_start(datetime.now(UTC)), months=1)
            partition = await conn.fetchval(
                "SELECT inhrelid::regclass::text FROM pg_inherits "
                "WHERE inhparent = 'image_process_jobs'::regclass LIMIT 1")
            await conn.execute("CREATE TABLE shaped (LIKE image_process_jobs INCLUDING ALL)")
            partition_shapes = await index_shapes(conn, partition)
            assert len(partition_shapes) == 9  # the primary key and eight others (BENCHMARKS.md)
            assert await index_shapes(conn, "shaped") == partition_shapes
            victim = await conn.fetchval(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'shaped' AND indexdef LIKE '%gin%'")
            await conn.execute(f'DROP INDEX "{victim}"')
            assert await index_shapes(conn, "shaped") != partition_shapes
        finally:
            await conn.close()
