"""user_job_counts in rank order for the per-user quartiles (issue 10 part 5b): an index on (jobs, user_id)
and the number of users with jobs, kept by triggers.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

`GET /v1/admin/stats/users` ranked every user (NTILE(4) over user_job_counts, 50k rows at 10M jobs) to
report four quartile bounds and a page of users. NTILE(4)'s buckets follow from the row count alone (the
first n % 4 buckets hold one row more), so a bound is the row at a known position of the (jobs, user_id)
order (stats.sql user_quartile_bounds: index-only scans of ix_user_job_counts_rank), and a user's quartile is
the number of quartile first rows at or before theirs. count(*) over 50k users alone took 3.5-9 ms, so n is
kept in user_job_counts_total (one row) by row triggers whose WHEN clauses fire only when a user starts or
stops having jobs: a new user's first job, retention emptying a user, a repair. The cost on the write side:
count_user's increment changes an indexed column, so it is no longer a HOT update (one more index entry
per accepted job, in a table of one row per user); a new user also updates the total's row.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_user_job_counts_rank ON user_job_counts (jobs, user_id)")
    # Index-only scans need the visibility map: every accepted job updates its user's row, so vacuum after
    # a fixed number of changes rather than 20% of the table (bench/user_quartiles.py: after 20k updates
    # without VACUUM the bounds take 16 ms instead of 4-6 ms).
    op.execute(
        "ALTER TABLE user_job_counts SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000)"
    )
    op.execute(
        """
        CREATE TABLE user_job_counts_total (
            one   boolean PRIMARY KEY DEFAULT true CHECK (one),
            users bigint  NOT NULL CHECK (users >= 0)
        )
        """
    )
    op.execute(
        "INSERT INTO user_job_counts_total (users) SELECT count(*) FROM user_job_counts WHERE jobs > 0"
    )
    op.execute(
        """
        CREATE FUNCTION rmbg_user_job_counts_total() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        BEGIN
            UPDATE user_job_counts_total
            SET users = users + CASE WHEN TG_OP <> 'DELETE' AND NEW.jobs > 0 THEN 1 ELSE 0 END
                              - CASE WHEN TG_OP <> 'INSERT' AND OLD.jobs > 0 THEN 1 ELSE 0 END;
            RETURN NULL;
        END
        $fn$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_user_job_counts_total_ins AFTER INSERT ON user_job_counts FOR EACH ROW "
        "WHEN (NEW.jobs > 0) EXECUTE FUNCTION rmbg_user_job_counts_total()"
    )
    op.execute(
        "CREATE TRIGGER trg_user_job_counts_total_upd AFTER UPDATE OF jobs ON user_job_counts FOR EACH ROW "
        "WHEN ((OLD.jobs > 0) <> (NEW.jobs > 0)) EXECUTE FUNCTION rmbg_user_job_counts_total()"
    )
    op.execute(
        "CREATE TRIGGER trg_user_job_counts_total_del AFTER DELETE ON user_job_counts FOR EACH ROW "
        "WHEN (OLD.jobs > 0) EXECUTE FUNCTION rmbg_user_job_counts_total()"
    )
    # TRUNCATE empties the table without row triggers: the total follows.
    op.execute(
        """
        CREATE FUNCTION rmbg_user_job_counts_truncated() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        BEGIN
            UPDATE user_job_counts_total SET users = 0;
            RETURN NULL;
        END
        $fn$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_user_job_counts_total_trunc AFTER TRUNCATE ON user_job_counts "
        "FOR EACH STATEMENT EXECUTE FUNCTION rmbg_user_job_counts_truncated()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS user_job_counts_total")
    op.execute("DROP TRIGGER IF EXISTS trg_user_job_counts_total_ins ON user_job_counts")
    op.execute("DROP TRIGGER IF EXISTS trg_user_job_counts_total_upd ON user_job_counts")
    op.execute("DROP TRIGGER IF EXISTS trg_user_job_counts_total_del ON user_job_counts")
    op.execute("DROP TRIGGER IF EXISTS trg_user_job_counts_total_trunc ON user_job_counts")
    op.execute("DROP FUNCTION IF EXISTS rmbg_user_job_counts_total()")
    op.execute("DROP FUNCTION IF EXISTS rmbg_user_job_counts_truncated()")
    op.execute("DROP INDEX IF EXISTS ix_user_job_counts_rank")
    op.execute("ALTER TABLE user_job_counts RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold)")
