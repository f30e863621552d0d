"""Leaner indexes, by the 10M-job benchmark (BENCHMARKS.md, "Storage at 10 million jobs").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

- ix_jobs_user_completed_keyset (459 MiB) and ix_jobs_completed_keyset (375 MiB) are dropped: the
  design's (user_id, created_at) and (created_at) indexes served queries 1 and 3 as fast at 10M jobs
  (0.91 / 1.14 ms and 0.75 / 0.88 ms p50 / p95 with both dropped), and every insert paid for them.
- ix_jobs_content becomes (content_sha256) alone: 509 MiB instead of 823 MiB. Every content has a
  handful of jobs at most, so reuse lookups filter model_name and params_hash on those few rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_user_completed_keyset")
    op.execute("DROP INDEX IF EXISTS ix_jobs_completed_keyset")
    op.execute("DROP INDEX IF EXISTS ix_jobs_content")
    op.execute("CREATE INDEX ix_jobs_content ON image_process_jobs (content_sha256)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_content")
    op.execute("CREATE INDEX ix_jobs_content ON image_process_jobs (content_sha256, model_name, params_hash)")
    op.execute(
        "CREATE INDEX ix_jobs_completed_keyset ON image_process_jobs (created_at DESC, job_id DESC) "
        "WHERE status = 'completed'"
    )
    op.execute(
        "CREATE INDEX ix_jobs_user_completed_keyset ON image_process_jobs (user_id, created_at DESC, job_id DESC) "
        "WHERE status = 'completed'"
    )
