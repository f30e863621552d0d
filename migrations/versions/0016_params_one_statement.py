"""Design query 4 chooses its path and reads in one statement, planned once per connection (issue 10 part 5).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03

JobsRepository.by_params asked params.sql params_share whether a value is rare, then ran by_params_hashes
or jobs.sql by_params: two round trips, and two custom plans over every monthly partition. At 10M jobs
(BENCHMARKS.md, "Params containment for rare values") that was 7.2-8.4 ms p50 client-side, of which
planning was most: jobs.sql by_params alone plans in 2.9 ms and runs in 0.9 ms. Both branches in one
statement (a one-time filter on the choice keeps the unchosen one from running) planned per call cost
5.6-6.3 ms of planning; with a generic plan, made once per connection and reused, the whole read was
2.8-4.1 ms p50 for every value measured.

rmbg_jobs_by_params holds that statement. It is PL/pgSQL so that its plan is cached for the session, and
it runs with plan_cache_mode = force_generic_plan so that the cached plan is the generic one: PostgreSQL's
own choice kept custom plans (its estimate of the generic plan is poor for a containment parameter). The
generic plan is safe here because the choice is made from the data at run time: a rare value (under
rare_share of the last 7 days' jobs, over at most max_hashes combinations) is read per params_hash from
ix_jobs_params_hash_created, newest first; any other walks the jobs newest first and stops at max_rows,
which is what the custom plans chose for common values too. A jobs.sql by_params with a generic plan is
not safe: for the rarest value it walked 58 ms.

Each row is the job (the table's row type, so the function follows the table's columns) and its tag names.
A downgrade needs params.sql from before this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The share is params.sql params_share's; the rare branch is its by_params_hashes (no `params @>` inside
# the LATERAL: with it, the planner ANDed the GIN with the hash index and sorted every match), the other
# jobs.sql by_params. Placeholder names carry p_ so they never shadow a column.
_UP = """
CREATE FUNCTION rmbg_jobs_by_params(p_contains jsonb, p_max_rows int, p_rare_share float8, p_max_hashes int)
RETURNS TABLE (job_row image_process_jobs, tag_names varchar[])
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN QUERY
    WITH share AS MATERIALIZED (
        SELECT (SELECT COALESCE(array_agg(p.params_hash ORDER BY p.params_hash), '{}')
                FROM params_combos p WHERE p.params @> p_contains) AS hashes,
               COALESCE(sum(c.jobs) FILTER (WHERE c.params @> p_contains), 0) AS jobs,
               COALESCE(sum(c.jobs), 0) AS all_jobs
        FROM params_daily_counts c
        WHERE c.stat_date >= (now() AT TIME ZONE 'UTC')::date - 7
    ), choice AS MATERIALIZED (
        SELECT s.hashes, cardinality(s.hashes) <= p_max_hashes AND s.jobs < p_rare_share * s.all_jobs AS rare
        FROM share s
    )
    (SELECT j.x, (SELECT t.names FROM rmbg_job_tags((j.x).job_id, (j.x).created_at) t)
     FROM choice
     CROSS JOIN LATERAL unnest(choice.hashes) AS h(params_hash)
     CROSS JOIN LATERAL (
         SELECT x FROM image_process_jobs x
         WHERE x.params_hash = h.params_hash
         ORDER BY x.created_at DESC, x.job_id DESC
         LIMIT p_max_rows
     ) j
     WHERE choice.rare
     ORDER BY (j.x).created_at DESC, (j.x).job_id DESC
     LIMIT p_max_rows)
    UNION ALL
    (SELECT x, (SELECT t.names FROM rmbg_job_tags(x.job_id, x.created_at) t)
     FROM image_process_jobs x
     WHERE NOT (SELECT choice.rare FROM choice) AND x.params @> p_contains
     ORDER BY x.created_at DESC, x.job_id DESC
     LIMIT p_max_rows);
END
$fn$
"""


def upgrade() -> None:
    op.execute(_UP)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS rmbg_jobs_by_params(jsonb, int, float8, int)")
