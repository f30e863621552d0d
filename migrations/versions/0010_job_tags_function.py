"""rmbg_job_tags(job_id, created_at): a job's tag names, sorted, written once for every statement of jobs.sql.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

jobs.sql wrote the same correlated subquery in 13 statements; they now say
``(SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags``. Nothing is stored; a downgrade
needs the jobs.sql of before this revision.

The function is set-returning (one row, always: an aggregate without GROUP BY), STABLE and not STRICT, so
the planner inlines it: EXPLAIN VERBOSE shows the plan of the inline subquery node for node (get_job, a
page, list_jobs_by_tag). A scalar SQL function (RETURNS varchar[]) is never inlined when its body has a
FROM or a subquery: it runs its own plan through the executor once per row (on 15 that plan is made again
in every execution of the calling statement; 18 caches a generic one, slower still here). Measured with
20,000 jobs over three months, 60,000 image_tags rows and 5,000 tags: EXPLAIN ANALYZE execution time,
medians of 7 interleaved rounds, the range of two runs on each server (the 2 cores were shared with other
work: differences within ~20% are noise).

    PostgreSQL 15.20      inline subquery   this function   scalar SQL function   PL/pgSQL
    get_job (1 row)       0.056-0.066 ms    0.063-0.072     0.37-0.50             0.18-0.19
    a page of 20          0.33-0.42         0.39-0.45       0.88-1.06             2.4-2.8
    a page of 1,000       14.7-18.4         13.2-20.9       21.4-22.6             -
    by tag, 20 rows       0.79-0.83         0.64-0.88       1.34-1.48             6.1-7.5

    PostgreSQL 18.6 (embedded)
    get_job (1 row)       0.059-0.060 ms    0.058-0.064     0.18-0.20             0.15-0.20
    a page of 20          0.33-0.37         0.35-0.41       3.2-3.7               2.6-6.4
    a page of 1,000       10.9-11.8         10.3-16.7       189-253               -
    by tag, 20 rows       0.81-0.88         0.80-0.89       4.2-7.4               4.2-4.9

tests/shared/db/test_jobs.py checks that the function stays inlined.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# created_at is named beside job_id so that only the job's month of image_tags is read (its partition
# key), as every lookup by id does. '{}' rather than NULL: a job without tags has an empty list.
_UP = """
CREATE FUNCTION rmbg_job_tags(p_job_id uuid, p_created_at timestamptz) RETURNS TABLE (names varchar[])
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT COALESCE(array_agg(t.name ORDER BY t.name), '{}')
    FROM image_tags it JOIN tags t ON t.tag_id = it.tag_id
    WHERE it.job_id = p_job_id AND it.created_at = p_created_at
$fn$
"""


def upgrade() -> None:
    op.execute(_UP)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS rmbg_job_tags(uuid, timestamptz)")
