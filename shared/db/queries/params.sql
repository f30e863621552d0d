-- Design query 4 (params containment) for rare values (migration 0012), chosen per request by
-- JobsRepository.by_params from what params_daily_counts says about the value.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: params_share(contains)^
-- The parameter combinations (params_hash) whose params contain `contains`, the jobs they have, and all
-- jobs accepted over the same days (processing_stats, one row a day, from the first day params_daily_counts
-- still has). params_daily_counts covers the days retention keeps (it prunes both together) and is filled
-- by the stats service, so a combination seen for the first time seconds ago may be missing.
SELECT COALESCE(array_agg(h.params_hash ORDER BY h.params_hash), '{}') AS hashes,
       COALESCE(sum(h.jobs), 0)::bigint AS jobs,
       (SELECT COALESCE(sum(s.total_jobs), 0) FROM processing_stats s
        WHERE s.stat_date >= (SELECT min(c.stat_date) FROM params_daily_counts c))::bigint AS all_jobs
FROM (
    SELECT c.params_hash, sum(c.jobs) AS jobs FROM params_daily_counts c
    WHERE c.params @> :contains::jsonb GROUP BY c.params_hash
) h;

-- name: by_params_hashes(hashes, contains, limit)
-- The newest `limit` jobs over the given hashes: per hash, the newest rows of ix_jobs_params_hash_created
-- (a Merge Append over the partitions, stopping at LIMIT), then the newest of those. `params @>` is
-- checked again: a hash names one combination, the containment is what was asked.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM unnest(:hashes::varchar[]) AS h(params_hash)
CROSS JOIN LATERAL (
    SELECT * FROM image_process_jobs x
    WHERE x.params_hash = h.params_hash AND x.params @> :contains::jsonb
    ORDER BY x.created_at DESC, x.job_id DESC
    LIMIT :limit
) j
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;
