"""GiST trigram index on tags.name, so fuzzy tag search reads nearest-first and stops at LIMIT.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

The design measured `name % 'product'` at 14 ms median / 24 ms p95 over 5k tags: 'product' matched
67% of the tags, so the GIN trigram index was skipped and every row's similarity computed, then
sorted. GIN cannot return rows in similarity order; GiST (gist_trgm_ops) can, through the `<->`
distance operator (1 - similarity), so `WHERE name % $1 ORDER BY name <-> $1 LIMIT 10` walks the
index nearest-first and stops after ten rows however many tags match. Measured here (5k tags, two
thirds matching 'product', PostgreSQL 15, warm): 0.53 ms median against 2.6 ms for the design's
`%` filter sorted by similarity(); the plan is asserted in tests/shared/db/test_design_queries.py.
The GIN index stays (the design's, and it serves `%`/LIKE filters without an order).

tags is small (thousands of rows), so a plain CREATE INDEX holds its lock for milliseconds; no
CONCURRENTLY (which cannot run inside the migration's transaction).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_tags_name_trgm_knn ON tags USING gist (name gist_trgm_ops)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_tags_name_trgm_knn")
