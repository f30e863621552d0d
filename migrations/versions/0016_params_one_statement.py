"""Design query 4 chooses its path and reads in one round trip, on plans made once per connection (issue 10 part 5).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03

JobsRepository.by_params asked params.sql params_share whether a value is rare, then ran by_params_hashes
or jobs.sql by_params: two round trips, and two custom plans over every monthly partition. At 10M jobs
(BENCHMARKS.md, "Params containment for rare values") that was 6.8-7.8 ms p50 client-side, of which
planning was most: jobs.sql by_params alone plans in 2.9 ms and runs in 0.9 ms. Both paths in one
statement (a one-time filter on the choice keeping the unchosen one from running) planned per call cost
5.6-6.3 ms of planning; with a generic plan, made once per connection and reused, the whole read was
2.6-4.1 ms p50 for every value measured.

rmbg_jobs_by_params makes the choice and runs the chosen read. It is PL/pgSQL so that the plans of its
statements are cached for the session (made again when a table they read changes: a new partition, an
ANALYZE), and it runs with plan_cache_mode = force_generic_plan so that they are the generic ones:
PostgreSQL's own choice kept custom plans. Three paths, by what params_daily_counts says about the value
over the last 7 days:

- rare (under rare_share of the jobs, over at most max_hashes combinations, possibly none): the newest
  rows of each matching params_hash from ix_jobs_params_hash_created;
- common (at least rare_share of the jobs): the jobs newest first, stopping at max_rows, which is what the
  custom plans chose for these values too;
- anything else (no counts for the week, e.g. the stats service is behind; a rare value spread over more
  than max_hashes combinations; a NULL setting): jobs.sql by_params's statement planned for this call, as
  before 0016, so that the planner sees the value and can take the params GIN index for a selective one.
  A generic plan cannot: it walked 58 ms for the rarest value measured.

Each row is the job (the table's row type, so the function follows the table's columns) and its tag
names. A downgrade needs params.sql from before this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The share is params.sql params_share's; the rare read is its by_params_hashes (no `params @>` inside the
# LATERAL: with it, the planner ANDed the GIN with the hash index and sorted every match), the others
# jobs.sql by_params. Names carry p_ / v_ so that they never shadow a column.
_UP = """
CREATE FUNCTION rmbg_jobs_by_params(p_contains jsonb, p_max_rows int, p_rare_share float8, p_max_hashes int)
RETURNS TABLE (job_row image_process_jobs, tag_names varchar[])
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_hashes varchar[];
    v_jobs bigint;
    v_all bigint;
BEGIN
    SELECT (SELECT COALESCE(array_agg(p.params_hash ORDER BY p.params_hash), '{}')
            FROM params_combos p WHERE p.params @> p_contains),
           COALESCE(sum(c.jobs) FILTER (WHERE c.params @> p_contains), 0),
           COALESCE(sum(c.jobs), 0)
    INTO v_hashes, v_jobs, v_all
    FROM params_daily_counts c
    WHERE c.stat_date >= (now() AT TIME ZONE 'UTC')::date - 7;

    IF cardinality(v_hashes) <= p_max_hashes AND v_jobs < p_rare_share * v_all THEN
        RETURN QUERY
        SELECT j.x, (SELECT t.names FROM rmbg_job_tags((j.x).job_id, (j.x).created_at) t)
        FROM unnest(v_hashes) AS h(params_hash)
        CROSS JOIN LATERAL (
            SELECT x FROM image_process_jobs x
            WHERE x.params_hash = h.params_hash
            ORDER BY x.created_at DESC, x.job_id DESC
            LIMIT p_max_rows
        ) j
        ORDER BY (j.x).created_at DESC, (j.x).job_id DESC
        LIMIT p_max_rows;
    ELSIF v_all > 0 AND v_jobs >= p_rare_share * v_all THEN
        RETURN QUERY
        SELECT x, (SELECT t.names FROM rmbg_job_tags(x.job_id, x.created_at) t)
        FROM image_process_jobs x
        WHERE x.params @> p_contains
        ORDER BY x.created_at DESC, x.job_id DESC
        LIMIT p_max_rows;
    ELSE
        RETURN QUERY EXECUTE
            'SELECT x, (SELECT t.names FROM rmbg_job_tags(x.job_id, x.created_at) t) '
            'FROM image_process_jobs x WHERE x.params @> $1 '
            'ORDER BY x.created_at DESC, x.job_id DESC LIMIT $2'
        USING p_contains, p_max_rows;
    END IF;
END
$fn$
"""


def upgrade() -> None:
    op.execute(_UP)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS rmbg_jobs_by_params(jsonb, int, float8, int)")
