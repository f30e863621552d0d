"""Jobs by params_hash, newest first: the rare-value path of design query 4 (issue 10 part 5a).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

`params @> x` for a value on few jobs took the jsonb_path_ops GIN on every partition and then sorted
(p95 9.8 ms at 10M jobs). params_daily_counts already knows which parameter combinations (params_hash)
contain x and how many jobs each has, so JobsRepository.by_params chooses per request: for a value on
under 1% of the jobs it reads each matching hash's newest rows from this index (params.sql
by_params_hashes), otherwise it keeps jobs.sql by_params (the created_at walk stops at LIMIT quickly for
a common value). At 10M jobs the prototype of this index took 646 MiB.
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


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_params_hash_created")
