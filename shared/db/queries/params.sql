-- Design query 4 (params containment) for rare values (migration 0012), chosen per request from what
-- params_daily_counts says about the value. JobsRepository.by_params runs by_params_chosen (one statement,
-- migration 0016); params_share and by_params_hashes are its two steps as separate statements, which is
-- how it ran before 0016: bench.params_plan times them as its baseline, and params_share shows an operator
-- or a test a value's share and combinations.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: params_share(contains)^
-- The parameter combinations whose params contain `contains` (params_combos, a few hundred rows), and the
-- jobs of the last 7 UTC days with such params against all jobs of those days (params_daily_counts, a
-- primary-key range of about 7 x combinations rows): how densely the value sits among the newest jobs,
-- which is what the created_at walk pays for. params_daily_counts is filled by the stats service, so a
-- combination seen for the first time seconds ago may be missing.
SELECT (SELECT COALESCE(array_agg(p.params_hash ORDER BY p.params_hash), '{}')
        FROM params_combos p WHERE p.params @> :contains::jsonb) AS hashes,
       COALESCE(sum(c.jobs) FILTER (WHERE c.params @> :contains::jsonb), 0)::bigint AS jobs,
       COALESCE(sum(c.jobs), 0)::bigint AS all_jobs
FROM params_daily_counts c
WHERE c.stat_date >= (now() AT TIME ZONE 'UTC')::date - 7;

-- name: by_params_hashes(hashes, limit)
-- The newest `limit` jobs over the given hashes: per hash, the newest rows of ix_jobs_params_hash_created
-- (a Merge Append over the partitions, stopping at LIMIT), then the newest of those. The containment is
-- params_share's (params_daily_counts.params @> x): a params_hash names one canonical combination. Checking
-- `params @>` again here made the planner AND the GIN with this index and sort every matching row (7
-- hashes with 1% of 890k jobs: 59 ms instead of about 1 ms).
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM unnest(:hashes::varchar[]) AS h(params_hash)
CROSS JOIN LATERAL (
    SELECT * FROM image_process_jobs x
    WHERE x.params_hash = h.params_hash
    ORDER BY x.created_at DESC, x.job_id DESC
    LIMIT :limit
) j
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: by_params_chosen(contains, limit, rare_share, max_hashes)
-- params_share's choice and the read it chooses, in one round trip, on plans made once per connection:
-- rmbg_jobs_by_params (migration 0016) holds the paths and why. The NOT EXISTS reads nothing; it names
-- image_process_jobs so that this statement's cached plan depends on the table, and a migration that
-- changes its columns makes the statement prepare again (the function's row type alone is not a
-- dependency PostgreSQL tracks: the columns would stay as prepared).
SELECT (r.job_row).*, r.tag_names AS tags
FROM rmbg_jobs_by_params(:contains::jsonb, :limit::int, :rare_share::float8, :max_hashes::int) AS r
WHERE NOT EXISTS (SELECT FROM ONLY image_process_jobs WHERE false)
ORDER BY (r.job_row).created_at DESC, (r.job_row).job_id DESC;
