"""The all-time per-user quartiles as a snapshot the stats service refreshes (issue 10 part 5).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

Design query 6 served live (stats.sql user_quartile_bounds, migration 0011) walks 3/4 of
ix_user_job_counts_rank to find the quartiles' first rows: 4.5-4.7 ms p50 and 6.3 ms p95 at 50k users on
a quiet run, 14-16 ms under load and three times that before VACUUM (BENCHMARKS.md): O(users) per request.
The stats service now computes the bounds every ``RMBG_STATS__QUARTILES_INTERVAL_S`` (60 s) and stores
them here, one row; the admin endpoint reads that row (a primary-key lookup) and answers one user's
quartile by comparing their count with the stored first rows. The bounds then lag the counts by up to
the interval, which the response states (``as_of``); a snapshot older than the endpoint's limit is not
used, and the bounds are computed live as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE user_quartile_snapshot (
            id          boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- one row
            computed_at timestamptz NOT NULL,
            total_users bigint      NOT NULL CHECK (total_users >= 0),
            -- [{quartile, users, min_jobs, max_jobs, first_user}, ...] for the non-empty quartiles, in order
            bounds      jsonb       NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS user_quartile_snapshot")
