"""Migrations: empty to head, 0001 to head on a filled database, concurrent upgrades, packaging."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.db.migrate import MigrationError, current, head_revision, render_sql, script_location, upgrade
from shared.db.partitions import partition_name

ScratchDb = Callable[[], Awaitable[str]]

JOB_INDEXES = {
    "ix_jobs_created_at",
    "ix_jobs_completed_at",
    "ix_jobs_user_created",
    "ix_jobs_params",
    "ix_jobs_large_files",
    "ix_jobs_content",
    "ix_jobs_active_updated",
    "ix_jobs_params_hash_created",
}


def _months(center: date, back: int, ahead: int) -> list[date]:
    out = []
    for offset in range(-back, ahead + 1):
        index = center.year * 12 + center.month - 1 + offset
        out.append(date(index // 12, index % 12 + 1, 1))
    return out


async def test_empty_database_upgrades_to_head(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    assert await asyncio.to_thread(current, dsn) is None
    await asyncio.to_thread(upgrade, dsn)
    assert await asyncio.to_thread(current, dsn) == head_revision() == "0020"
    # A second upgrade is a no-op.
    await asyncio.to_thread(upgrade, dsn)

    conn = await asyncpg.connect(dsn)
    try:
        tables = {r["relname"] for r in await conn.fetch("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p')")}
        assert {"users", "tags", "image_process_jobs", "image_tags", "processing_stats", "stats_ledger"} <= tables
        assert {"api_keys", "idempotency_keys", "user_tags"} <= tables
        user_columns = {
            r["column_name"]
            for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'users'")
        }
        assert {"email_encrypted", "email_digest"} <= user_columns and "email" not in user_columns
        extensions = {r["extname"] for r in await conn.fetch("SELECT extname FROM pg_extension")}
        assert "pg_trgm" in extensions
        assert "pgcrypto" not in extensions

        # Partitions from 6 months back to 3 ahead, for both partitioned tables.
        today = datetime.now(UTC).date()
        for month in _months(today, 6, 3):
            for table in ("image_process_jobs", "image_tags"):
                assert partition_name(table, month) in tables
        no_default = await conn.fetchval("SELECT count(*) FROM pg_partitioned_table WHERE partdefid <> 0")
        assert no_default == 0

        # Indexes declared on the parent exist on every partition.
        parent_indexes = {
            r["indexname"]
            for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'image_process_jobs'")
        }
        assert JOB_INDEXES | {"image_process_jobs_pkey"} == parent_indexes
        this_month = partition_name("image_process_jobs", date(today.year, today.month, 1))
        on_partition = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = $1", this_month)
        assert on_partition == len(parent_indexes)
        assert await conn.fetchval("SELECT to_regclass('ix_tags_name_trgm_knn') IS NOT NULL")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'trg_jobs_status_guard' AND NOT tgisinternal"
            )
            >= 1
        )
    finally:
        await conn.close()


FILL_SQL = """
INSERT INTO tags (name) SELECT 'tag-' || g FROM generate_series(1, 50) g;
INSERT INTO image_process_jobs (
    job_id, created_at, user_id, original_path, status, params, params_hash, content_sha256,
    model_name, original_bytes, source, mask_path, processed_path, completed_at, processing_time_ms)
SELECT
    -- A UUIDv7-shaped id for the row's millisecond (what shared.ids.uuid7 makes).
    (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0')
        || '7' || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
    ts, 'user-' || (g % 37), 'original/' || g,
    CASE WHEN g % 5 = 0 THEN 'pending' ELSE 'completed' END,
    jsonb_build_object('threshold', (g % 10) / 10.0), 'h' || (g % 7),
    decode(md5(g::text) || md5(g::text), 'hex'), 'briaai/RMBG-2.0', 1000 + g, 'http',
    CASE WHEN g % 5 = 0 THEN NULL ELSE 'mask/' || g END,
    CASE WHEN g % 5 = 0 THEN NULL ELSE 'processed/' || g END,
    CASE WHEN g % 5 = 0 THEN NULL ELSE ts + interval '1 second' END,
    CASE WHEN g % 5 = 0 THEN NULL ELSE g % 1000 END
FROM generate_series(1, 3000) g,
     LATERAL (SELECT date_trunc('milliseconds', now() - (g % 150) * interval '1 day'
                                 - g * interval '1 second') AS ts) t;
INSERT INTO image_tags (job_id, created_at, tag_id)
SELECT j.job_id, j.created_at, 1 + (abs(hashtext(j.job_id::text)) % 50) FROM image_process_jobs j;
"""

CHECKSUM_SQL = """
SELECT count(*) AS n,
       md5(string_agg(job_id::text || status || params::text || coalesce(mask_path, ''), ','
                      ORDER BY job_id)) AS digest
FROM image_process_jobs
"""


async def test_upgrade_from_0001_keeps_data(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn, "0001")
    assert await asyncio.to_thread(current, dsn) == "0001"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL_SQL)
        before = await conn.fetchrow(CHECKSUM_SQL)
        tags_before = await conn.fetchval("SELECT count(*) FROM image_tags")
        assert before["n"] == 3000
        assert await conn.fetchval("SELECT to_regclass('ix_tags_name_trgm_knn')") is None

        await asyncio.to_thread(upgrade, dsn)

        assert await asyncio.to_thread(current, dsn) == head_revision()
        after = await conn.fetchrow(CHECKSUM_SQL)
        assert dict(after) == dict(before)
        assert await conn.fetchval("SELECT count(*) FROM image_tags") == tags_before
        assert await conn.fetchval("SELECT to_regclass('ix_tags_name_trgm_knn') IS NOT NULL")
        # 0008 backfills each user's tags from their jobs (creating the jobs' users, as intake does).
        pairs = await conn.fetchval(
            """
            SELECT count(*) FROM (SELECT DISTINCT j.user_id, it.tag_id FROM image_tags it
                                  JOIN image_process_jobs j USING (job_id, created_at)) p
            """
        )
        assert pairs > 0 and await conn.fetchval("SELECT count(*) FROM user_tags") == pairs
        assert await conn.fetchval("SELECT count(*) FROM users") == 37
    finally:
        await conn.close()


async def test_upgrade_to_0008_refuses_plaintext_emails(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn, "0007")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO users (user_id, username, email) VALUES ('u1', 'u1', 'a@example.com')")
        with pytest.raises(MigrationError, match="plaintext emails"):
            await asyncio.to_thread(upgrade, dsn)
        assert await asyncio.to_thread(current, dsn) == "0007"
        await conn.execute("UPDATE users SET email = NULL")
        await asyncio.to_thread(upgrade, dsn)
        assert await asyncio.to_thread(current, dsn) == head_revision()
    finally:
        await conn.close()


async def test_concurrent_upgrades_apply_once(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    await asyncio.gather(*(asyncio.to_thread(upgrade, dsn) for _ in range(4)))
    assert await asyncio.to_thread(current, dsn) == head_revision()


async def test_upgrade_refuses_downgrade_and_unknown(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn)
    with pytest.raises(MigrationError):
        await asyncio.to_thread(upgrade, dsn, "0001")
    with pytest.raises(MigrationError):
        await asyncio.to_thread(upgrade, dsn, "9999")


async def test_upgrade_called_inside_a_running_loop(scratch_database: ScratchDb) -> None:
    # Sync API called straight from async code: it moves itself to a worker thread.
    dsn = await scratch_database()
    upgrade(dsn)
    assert current(dsn) == head_revision()


def test_config_does_not_depend_on_cwd(tmp_path: Path) -> None:
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert head_revision() == "0020"
        assert (script_location() / "env.py").is_file()
        sql = render_sql(None)
    finally:
        os.chdir(here)
    assert sql.startswith("BEGIN;")
    assert sql.rstrip().endswith("COMMIT;")
    assert "pgcrypto" not in sql
    assert "CREATE TABLE image_process_jobs" in sql


async def test_database_at_unknown_revision_is_refused(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="does not know"):
        await asyncio.to_thread(upgrade, dsn)


async def test_failed_upgrade_changes_nothing(scratch_database: ScratchDb) -> None:
    dsn = await scratch_database()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE tags (x int)")  # collides with migration 0001
        with pytest.raises(MigrationError, match="already exists"):
            await asyncio.to_thread(upgrade, dsn)
        assert await asyncio.to_thread(current, dsn) is None
        assert await conn.fetchval("SELECT to_regclass('users')") is None
        assert await conn.fetchval("SELECT to_regclass('alembic_version')") is None
        # The advisory lock was released: a fixed database migrates.
        await conn.execute("DROP TABLE tags")
        await asyncio.to_thread(upgrade, dsn)
        assert await asyncio.to_thread(current, dsn) == head_revision()
    finally:
        await conn.close()


async def test_0014_derives_keys_and_its_downgrade_stores_them_back(scratch_database: ScratchDb) -> None:
    """Rows from before 0014 keep their stored keys; rows after store none; the downgrade writes them in."""
    import io

    from alembic import command

    from shared.contracts.events import CutoutFormat
    from shared.db.migrate import alembic_config
    from shared.db.pool import create_pool
    from shared.db.repositories import create_repositories
    from shared.ids import uuid7
    from shared.storage.keys import ObjectKeys

    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn, "0013")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL_SQL)
        await asyncio.to_thread(upgrade, dsn, "0014")
        legacy = await conn.fetchval("SELECT count(*) FROM image_process_jobs WHERE original_path IS NOT NULL")
        assert legacy == 3000
    finally:
        await conn.close()

    sha = "cd" * 32
    jobs = create_repositories().jobs
    pool = await create_pool(dsn, min_size=1, max_size=1, command_timeout=30)
    try:
        async with pool.acquire() as c:
            job_id = uuid7()
            assert await jobs.insert_job(
                c, job_id=job_id, user_id="mig", original_ext="jpg", content_sha256=sha, original_bytes=10,
                image_width=1, image_height=1, params={"threshold": 0.25}, params_hash="h14", model_name="m/x",
                source="http", tags=[],
            )
            done = await jobs.mark_completed(
                c, job_id=job_id, cutout_format=CutoutFormat.PNG, mask_bytes=1, processed_bytes=1, model_name="m/x",
                model_revision="r2", processing_time_ms=1, completed_at=datetime.now(UTC), reused=False,
            )
            assert done is not None
    finally:
        await pool.close()
    expected = (
        ObjectKeys.original(sha, "jpg"),
        ObjectKeys.job_mask(sha, model_name="m/x", model_revision="r2", threshold=0.25),
        ObjectKeys.cutout(sha, model_name="m/x", model_revision="r2", params_hash="h14", fmt=CutoutFormat.PNG),
    )
    assert (done.original_path, done.mask_path, done.processed_path) == expected

    cfg = alembic_config()
    cfg.output_buffer = buffer = io.StringIO()
    command.downgrade(cfg, "0014:0013", sql=True)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(buffer.getvalue())
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0013"
        row = await conn.fetchrow(
            "SELECT original_path, mask_path, processed_path FROM image_process_jobs WHERE job_id = $1", job_id
        )
        assert row is not None and tuple(row) == expected
        after = await conn.fetchrow(CHECKSUM_SQL + " WHERE user_id <> 'mig'")
        assert after["n"] == 3000
    finally:
        await conn.close()


async def test_a_month_detached_before_0014_is_finished_after_the_upgrade(scratch_database: ScratchDb) -> None:
    """An interrupted retention leaves a detached month (a table of its own); 0014 adds its columns too, and
    retention's reads of it work after the upgrade."""
    from shared.db.repositories import create_repositories

    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn, "0013")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL_SQL)
        month = await conn.fetchval(
            "SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC')::date FROM image_process_jobs"
        )
        retired = await conn.fetchval("SELECT rmbg_retire_month($1)", month)
        assert retired > 0
        await asyncio.to_thread(upgrade, dsn)
        rows = await conn.fetch("SELECT * FROM rmbg_retired_rows($1, '\\x'::bytea, 100000)", month)
        assert len(rows) == retired and all(r["original_path"].startswith("original/") for r in rows)
        batch = await create_repositories().retention.retired_unreferenced(conn, month=month, after_sha=b"", limit=10)
        assert batch.last_sha is not None
    finally:
        await conn.close()


_DERIVED_ROWS_SQL = """
INSERT INTO image_process_jobs (
    job_id, created_at, user_id, original_ext, status, completed_at, processing_time_ms, error_message, params,
    params_hash, content_sha256, model_name, model_revision, original_bytes, source, cutout_format)
SELECT
    (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0')
        || '7' || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
    ts, 'k-' || (g % 5), 'jpg', CASE WHEN g % 7 = 0 THEN 'failed' ELSE 'completed' END, ts + interval '1 second',
    CASE WHEN g % 7 = 0 THEN NULL ELSE 10 END, CASE WHEN g % 7 = 0 THEN 'boom' END,
    CASE WHEN g % 3 = 0 THEN '{}'::jsonb ELSE jsonb_build_object('threshold', (g % 10) / 10.0) END, 'h' || (g % 4),
    decode(md5((g % 40)::text) || md5((g % 40)::text), 'hex'),  -- 40 contents, several jobs each
    (ARRAY['briaai/RMBG-2.0', 'ZhengPeng7/BiRefNet lite', '__odd__'])[1 + g % 3],
    (ARRAY[NULL, '', 'rév/1', '2f6a1c0e9d4b7a8c3e5f'])[1 + g % 4], 100, 'http',
    CASE WHEN g % 7 = 0 THEN NULL WHEN g % 2 = 0 THEN 'png' ELSE 'webp' END
FROM generate_series(1, 200) g,
     LATERAL (SELECT date_trunc('month', now() - interval '3 months') + g * interval '1 minute' AS ts) t
"""


async def test_0017_keys_are_unchanged_and_its_downgrade_restores_0014s_functions(scratch_database: ScratchDb) -> None:
    """0017 rewrites the key functions over their parts: the same keys before, at and after it."""
    import io

    from alembic import command

    from shared.db.migrate import alembic_config

    derive = """
        SELECT rmbg_original_key(NULL, 'jpg', $1), rmbg_original_key('s3://b/k', 'jpg', $1),
               rmbg_mask_key(NULL, 'webp', $1, 'briaai/RMBG-2.0', NULL, '{"threshold": 0.0125}'),
               rmbg_mask_key(NULL, NULL, $1, 'm', 'r', '{}'),
               rmbg_cutout_key(NULL, 'png', $1, '/models/x y/', 'rév/1', 'h1'),
               rmbg_cutout_key('processed/kept', 'png', $1, 'm', 'r', 'h1')
    """
    sha = bytes.fromhex("ab" * 32)
    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn, "0016")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_DERIVED_ROWS_SQL)
        month = await conn.fetchval("SELECT date_trunc('month', now() - interval '3 months')::date")
        assert await conn.fetchval("SELECT rmbg_retire_month($1)", month) == 200
        retired_sql = "SELECT * FROM rmbg_retired_rows($1, $2, $3)"

        Row = tuple[Any, ...]

        async def state() -> tuple[Row, list[Row], list[list[Row]]]:
            keys = tuple(await conn.fetchrow(derive, sha) or ())
            whole = sorted((tuple(r) for r in await conn.fetch(retired_sql, month, b"", 100000)), key=repr)
            # In batches of about 7 rows too: the slug join must not lose or repeat a row at a batch's edge.
            batches: list[list[Row]] = []
            after = b""
            while rows := [tuple(r) for r in await conn.fetch(retired_sql, month, after, 7)]:
                batches.append(rows)
                after = rows[-1][0]
            assert sorted((r for b in batches for r in b), key=repr) == whole
            return keys, whole, batches

        before = await state()
        assert len(before[1]) == 200 and all(r[1].startswith("original/") for r in before[1])
        assert any(r[2] is None for r in before[1]) and any("@norev/" in (r[2] or "") for r in before[1])
        await asyncio.to_thread(upgrade, dsn, "0017")
        assert await state() == before
        assert await conn.fetchval("SELECT to_regproc('rmbg_mask_key_of') IS NOT NULL")
        cfg = alembic_config()
        cfg.output_buffer = buffer = io.StringIO()
        command.downgrade(cfg, "0017:0016", sql=True)
        await conn.execute(buffer.getvalue())
        assert await state() == before
        assert await conn.fetchval("SELECT to_regproc('rmbg_mask_key_of') IS NULL")
        assert "rmbg_original_key(" in await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'rmbg_retired_rows'"
        )
    finally:
        await conn.close()


async def test_0018_statement_triggers_and_their_downgrade(scratch_database: ScratchDb) -> None:
    """0018's triggers behave as 0001's and 0009's did (a webhook due once when its job ends, a terminal row
    refused), and its downgrade restores those row triggers."""
    import io

    from alembic import command

    from shared.db.migrate import alembic_config

    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn, "0017")
    conn = await asyncpg.connect(dsn)
    triggers = "SELECT array_agg(DISTINCT tgname ORDER BY tgname) FROM pg_trigger WHERE tgname LIKE 'trg_jobs_%'"
    # The definitions as PostgreSQL prints them: the downgrade must bring back exactly these.
    definitions = """
        SELECT array_agg(d ORDER BY d) FROM (
            SELECT pg_get_functiondef(p.oid) AS d FROM pg_proc p
            WHERE p.proname IN ('rmbg_jobs_status_guard', 'rmbg_webhooks_job_ended')
            UNION ALL
            SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
            WHERE t.tgrelid = 'image_process_jobs'::regclass AND t.tgname LIKE 'trg_jobs_%') x
    """
    try:
        at_0017 = await conn.fetchval(definitions)
        assert len(at_0017) == 4
        await asyncio.to_thread(upgrade, dsn, "0018")
        await conn.execute(FILL_SQL)

        async def behaves() -> None:
            job_id, created_at = await conn.fetchrow(
                "SELECT job_id, created_at FROM image_process_jobs WHERE status = 'pending' LIMIT 1")
            await conn.execute(
                "INSERT INTO webhooks (job_id, created_at, user_id, url) VALUES ($1, $2, 'mig', 'https://h.example')",
                job_id, created_at)
            await conn.execute("UPDATE image_process_jobs SET status = 'processing' WHERE job_id = $1", job_id)
            assert await conn.fetchval("SELECT state FROM webhooks WHERE job_id = $1", job_id) == "pending"
            await conn.execute(
                "UPDATE image_process_jobs SET status = 'failed', error_message = 'e', completed_at = now() "
                "WHERE job_id = $1", job_id)
            assert await conn.fetchval("SELECT event_type FROM webhooks WHERE job_id = $1 AND state = 'due'",
                                       job_id) == "job.failed"
            for change in ("status = 'processing'", "error_message = 'x'"):
                with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                    await conn.execute(f"UPDATE image_process_jobs SET {change} WHERE job_id = $1", job_id)
            # Delivered, then the ended row repaired: the trigger runs and owes nothing again.
            await conn.execute("UPDATE webhooks SET state = 'delivered', delivered_at = now() WHERE job_id = $1",
                               job_id)
            async with conn.transaction():
                await conn.execute("SET LOCAL rmbg.allow_terminal_update = on")
                await conn.execute(
                    "UPDATE image_process_jobs SET status = status, error_message = 'y' WHERE job_id = $1", job_id)
            assert await conn.fetchval("SELECT state FROM webhooks WHERE job_id = $1", job_id) == "delivered"

        assert await conn.fetchval(triggers) == [
            "trg_jobs_status_guard", "trg_jobs_webhook_due_insert", "trg_jobs_webhook_due_update"]
        await behaves()
        cfg = alembic_config()
        cfg.output_buffer = buffer = io.StringIO()
        command.downgrade(cfg, "0018:0017", sql=True)
        await conn.execute(buffer.getvalue())
        assert await conn.fetchval(triggers) == ["trg_jobs_status_guard", "trg_jobs_webhook_due"]
        assert await conn.fetchval(definitions) == at_0017
        await behaves()
    finally:
        await conn.close()


async def test_0019_wide_daily_means_and_a_retirement_that_survives_short_user_counts(
    scratch_database: ScratchDb,
) -> None:
    """A day's mean over 27.8 h fits processing_stats; a month retires although a user's count is short of
    its jobs (the count stops at 0); the downgrade brings 0005's subtraction back, CHECK failure and all."""
    import io

    from alembic import command

    from shared.db.migrate import alembic_config

    dsn = await scratch_database()
    await asyncio.to_thread(upgrade, dsn)
    conn = await asyncpg.connect(dsn)
    try:
        # Five jobs that each waited 30 hours: a mean of 108,000,000 ms (over numeric(10, 2)'s 99,999,999.99).
        await conn.execute(
            "INSERT INTO processing_stats (stat_date, total_jobs, completed_jobs, sum_processing_time_ms) "
            "VALUES ('2030-01-02', 5, 5, 5 * 108000000)"
        )
        assert await conn.fetchval("SELECT avg_processing_time_ms FROM processing_stats") == 108_000_000

        await conn.execute(FILL_SQL)
        month, user = await conn.fetchrow(
            "SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC')::date, "
            "(array_agg(user_id ORDER BY created_at))[1] FROM image_process_jobs"
        )
        await conn.execute("INSERT INTO user_job_counts (user_id, jobs) VALUES ($1, 0) "
                           "ON CONFLICT (user_id) DO UPDATE SET jobs = 0", user)  # short: its events never counted
        assert await conn.fetchval("SELECT rmbg_retire_month($1)", month) > 0
        assert await conn.fetchval("SELECT jobs FROM user_job_counts WHERE user_id = $1", user) == 0

        cfg = alembic_config()
        cfg.output_buffer = buffer = io.StringIO()
        command.downgrade(cfg, "0019:0018", sql=True)
        await conn.execute("DELETE FROM processing_stats")  # the narrower type cannot hold that mean
        await conn.execute(buffer.getvalue())
        assert await conn.fetchval(
            "SELECT numeric_precision FROM information_schema.columns "
            "WHERE table_name = 'processing_stats' AND column_name = 'avg_processing_time_ms'"
        ) == 10
        next_month = await conn.fetchval("SELECT ($1::date + interval '1 month')::date", month)
        await conn.execute("UPDATE user_job_counts SET jobs = 0")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.fetchval("SELECT rmbg_retire_month($1)", next_month)
    finally:
        await conn.close()
