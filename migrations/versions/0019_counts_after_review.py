"""Daily means that fit any wait, and retirement that neither fails on nor deadlocks over user counts.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04

Three faults a review found (2026-12-04), each in a piece of 0001 or 0005:

- processing_stats.avg_processing_time_ms was numeric(10, 2): at most 99,999,999.99 ms, 27.8 hours. A job's
  processing time runs from its acceptance to its result, and a job waits in its queue however long an
  outage lasts (the sweeper re-queues it only after a day idle, three times). A day whose completed jobs
  waited more than 27.8 h on average failed every completed event with 22003 (numeric field overflow,
  permanent: dead-lettered), and reconcile failed the same way. numeric(12, 2) holds any mean of
  processing_time_ms, an integer (at most 2,147,483,647 ms).
- rmbg_retire_month subtracted a month's jobs from user_job_counts, whose CHECK (jobs >= 0) then failed the
  whole retirement when a user's count was short, and failed it on every later run too. Counts go short when
  an accepted event is not counted: an upload event older than the stats ledger's horizon, an event intake
  could not publish. The subtraction now stops at 0. A short count stays short (`rmbg stats-reconcile` and
  StatsRepository.rebuild_user_counts repair it); retention no longer depends on it.
- The same UPDATE took users' rows in join order while a stats batch takes them in event order under the
  stats writers' lock (7270, 2), so the two could deadlock, and a deadlock aborted the month's retirement.
  The function now takes that lock before it touches user_job_counts, as retention.sql delete_before's
  callers do.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RETIRE = """
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
        PERFORM pg_advisory_xact_lock(7270, 2);  -- shared/db/locks.py STATS
        EXECUTE format(
            'UPDATE user_job_counts u SET jobs = {jobs} '
            'FROM (SELECT user_id, count(*) AS n FROM %I GROUP BY user_id) d WHERE u.user_id = d.user_id',
            jobs_part);
        EXECUTE format('ALTER TABLE image_process_jobs DETACH PARTITION %I', jobs_part);
    END IF;
    RETURN n;
END
$fn$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE processing_stats ALTER COLUMN avg_processing_time_ms TYPE numeric(12, 2)")
    op.execute(_RETIRE.replace("{jobs}", "GREATEST(u.jobs - d.n, 0)"))


def downgrade() -> None:
    # 0005's function exactly (no lock, no floor); a mean over 27.8 h makes the type change fail, as it must.
    op.execute(
        _RETIRE.replace("{jobs}", "u.jobs - d.n").replace(
            "        PERFORM pg_advisory_xact_lock(7270, 2);  -- shared/db/locks.py STATS\n", ""
        )
    )
    op.execute("ALTER TABLE processing_stats ALTER COLUMN avg_processing_time_ms TYPE numeric(10, 2)")
