"""Retention support: a content index over every status, and month retirement functions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

- Retention deletes an object only when no remaining job has the same content (object keys derive
  from content). Pending, processing and failed jobs reference their originals too, so the reuse
  index (partial, completed only) cannot answer that; it is replaced by the same columns without the
  predicate, which still serves result reuse (status is filtered on the heap rows of one content).
- rmbg_retire_month(month) drops the month's image_tags partition (tags of expired jobs are not kept)
  and detaches the month's jobs partition: from then on the application no longer sees those rows,
  while retention reads their object keys from the detached table, deletes the objects, and finally
  drops it (rmbg_drop_retired). A run interrupted between the two finds the detached table with
  rmbg_retired_months() and finishes it, so nothing is orphaned by a crash.
- DDL with identifiers lives here, in PL/pgSQL with format('%I'), not in Python strings.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UP = [
    "DROP INDEX IF EXISTS ix_jobs_result_reuse",
    "CREATE INDEX ix_jobs_content ON image_process_jobs (content_sha256, model_name, params_hash)",
    """
    CREATE FUNCTION rmbg_retire_month(month date) RETURNS bigint
    LANGUAGE plpgsql AS $fn$
    DECLARE
        suffix text := to_char(month, '"y"YYYY"m"MM');
        jobs_part text := 'image_process_jobs_' || suffix;
        tags_part text := 'image_tags_' || suffix;
        n bigint := 0;
    BEGIN
        IF to_regclass(tags_part) IS NOT NULL THEN
            EXECUTE format('DROP TABLE %I', tags_part);
        END IF;
        IF to_regclass(jobs_part) IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(jobs_part)) THEN
            EXECUTE format('SELECT count(*) FROM %I', jobs_part) INTO n;
            EXECUTE format('ALTER TABLE image_process_jobs DETACH PARTITION %I', jobs_part);
        END IF;
        RETURN n;
    END
    $fn$
    """,
    """
    CREATE FUNCTION rmbg_retired_months() RETURNS SETOF date
    LANGUAGE sql STABLE AS $fn$
        SELECT to_date(right(c.relname, 8), '"y"YYYY"m"MM')
        FROM pg_class c
        JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = current_schema()
        WHERE c.relkind = 'r' AND c.relname ~ '^image_process_jobs_y\\d{4}m\\d{2}$'
          AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
        ORDER BY 1
    $fn$
    """,
    """
    CREATE FUNCTION rmbg_retired_objects(month date, after_sha bytea, max_contents int)
    RETURNS TABLE (content_sha256 bytea, paths text[])
    LANGUAGE plpgsql AS $fn$
    BEGIN
        -- One row per content, keyset over content_sha256 (the detached table keeps its ix_jobs_content),
        -- so a month of a million jobs is read in bounded pieces and no content is split across two.
        RETURN QUERY EXECUTE format(
            'SELECT content_sha256, array_remove(array_agg(DISTINCT original_path::text) '
            '|| array_agg(DISTINCT mask_path::text) || array_agg(DISTINCT processed_path::text), NULL) '
            'FROM %I WHERE content_sha256 > $1 GROUP BY content_sha256 ORDER BY content_sha256 LIMIT $2',
            'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM'))
        USING after_sha, max_contents;
    END
    $fn$
    """,
    """
    CREATE FUNCTION rmbg_drop_retired(month date) RETURNS void
    LANGUAGE plpgsql AS $fn$
    DECLARE
        jobs_part text := 'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM');
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(jobs_part)) THEN
            RAISE EXCEPTION '% is still attached; retire it first', jobs_part;
        END IF;
        EXECUTE format('DROP TABLE IF EXISTS %I', jobs_part);
    END
    $fn$
    """,
]

_DOWN = [
    "DROP FUNCTION IF EXISTS rmbg_drop_retired(date)",
    "DROP FUNCTION IF EXISTS rmbg_retired_objects(date, bytea, int)",
    "DROP FUNCTION IF EXISTS rmbg_retired_months()",
    "DROP FUNCTION IF EXISTS rmbg_retire_month(date)",
    "DROP INDEX IF EXISTS ix_jobs_content",
    """
    CREATE INDEX ix_jobs_result_reuse ON image_process_jobs (content_sha256, model_name, params_hash)
        WHERE status = 'completed'
    """,
]


def upgrade() -> None:
    for statement in _UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWN:
        op.execute(statement)
