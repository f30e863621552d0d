"""Jobs by params_hash, newest first: the rare-value path of design query 4 (issue 10 part 5a).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

`params @> x` for a value on few jobs took the jsonb_path_ops GIN on every partition and then sorted
(p95 9.8 ms at 10M jobs). params_daily_counts knows how many jobs each parameter combination
(params_hash) had each day, so JobsRepository.by_params chooses per request (params.sql params_share):
for a value on under 1% of the last 7 days' jobs it reads each matching hash's newest rows from
ix_jobs_params_hash_created (params.sql by_params_hashes), otherwise it keeps jobs.sql by_params (the
created_at walk stops at LIMIT quickly for a common value). At 10M jobs the prototype of this index took
646 MiB.

The matching hashes come from params_combos, one row per combination ever counted (a few hundred), kept
by a trigger on params_daily_counts' inserts (the first job of a combination each day; the stats
service's increments are updates and do not fire it). Finding them in params_daily_counts itself meant
grouping every (day, combination) row that matched: 6,481 rows and 9.7 ms for a common value at 1M jobs.
Combinations are not removed when retention prunes their last day: a stale hash costs one index probe
per partition and returns nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_jobs_params_hash_created ON image_process_jobs (params_hash, created_at DESC, job_id DESC)"
    )
    op.execute(
        """
        CREATE TABLE params_combos (
            params_hash varchar(16) PRIMARY KEY,
            params      jsonb       NOT NULL
        )
        """
    )
    op.execute(
        "INSERT INTO params_combos (params_hash, params) "
        "SELECT DISTINCT ON (params_hash) params_hash, params FROM params_daily_counts ORDER BY params_hash"
    )
    op.execute(
        """
        CREATE FUNCTION rmbg_params_combo_seen() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        BEGIN
            INSERT INTO params_combos (params_hash, params) VALUES (NEW.params_hash, NEW.params)
            ON CONFLICT (params_hash) DO NOTHING;
            RETURN NULL;
        END
        $fn$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_params_combo_seen AFTER INSERT ON params_daily_counts FOR EACH ROW "
        "EXECUTE FUNCTION rmbg_params_combo_seen()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS trg_params_combo_seen ON params_daily_counts")
    op.execute("DROP FUNCTION IF EXISTS rmbg_params_combo_seen()")
    op.execute("DROP TABLE IF EXISTS params_combos")
    op.execute("DROP INDEX IF EXISTS ix_jobs_params_hash_created")
