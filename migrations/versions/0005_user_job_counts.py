"""Per-user job counts, kept by the stats service and by retention.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Design query 6 (NTILE(4) over per-user job counts) measured 0.95 s on 10M jobs with the design's
schema and about the same with ours: it is a GROUP BY over every job. The stats service increments
this table in the same transaction and under the same ledger as processing_stats (so each accepted
job counts once), and retention subtracts the jobs it removes in the transaction that removes them.
The query then ranks one row per user (50k) instead of grouping 10M jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE user_job_counts (
            user_id varchar(64) PRIMARY KEY,
            jobs    bigint      NOT NULL DEFAULT 0 CHECK (jobs >= 0)
        )
        """
    )
    op.execute(
        "INSERT INTO user_job_counts (user_id, jobs) SELECT user_id, count(*) FROM image_process_jobs GROUP BY 1"
    )
    # Retirement subtracts the month's jobs per user in the transaction that detaches the partition.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION rmbg_retire_month(month date) RETURNS bigint
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
                EXECUTE format(
                    'UPDATE user_job_counts u SET jobs = u.jobs - d.n '
                    'FROM (SELECT user_id, count(*) AS n FROM %I GROUP BY user_id) d WHERE u.user_id = d.user_id',
                    jobs_part);
                EXECUTE format('ALTER TABLE image_process_jobs DETACH PARTITION %I', jobs_part);
            END IF;
            RETURN n;
        END
        $fn$
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS user_job_counts")
