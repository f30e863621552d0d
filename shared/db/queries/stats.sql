-- processing_stats: one row per UTC day, kept current by stats events and repairable from the jobs.
-- A job counts on the UTC date of its created_at; every day bound below is computed in UTC
-- explicitly, so the session's TimeZone setting cannot move a job to another day.

-- name: apply_event(stat_date, job_id, kind, processing_time_ms)$
-- One statement: the ledger row and the increment happen together or not at all, and only when the
-- ledger row is new, so a redelivered event changes nothing. Returns true when counted, else NULL.
-- Stats writers take the transaction-scoped advisory lock (7270, 2: shared/db/locks.py STATS) first. They are serialised
-- anyway by today's processing_stats row, which nearly every event updates and whose lock lasts to
-- the end of the caller's batch transaction; the advisory lock only fixes the order, so two batches
-- that touch two days (or the same job and kind) in opposite orders wait instead of deadlocking
-- (without it, 4 concurrent consumers of 60 jobs' events deadlocked in tests/shared/db/test_stats.py).
WITH writer AS MATERIALIZED (
    SELECT pg_advisory_xact_lock(7270, 2) AS locked
), ledger AS (
    INSERT INTO stats_ledger (stat_date, job_id, kind)
    SELECT :stat_date::date, :job_id::uuid, :kind::varchar FROM writer
    ON CONFLICT DO NOTHING
    RETURNING kind
)
INSERT INTO processing_stats AS s (stat_date, total_jobs, completed_jobs, failed_jobs, sum_processing_time_ms)
SELECT :stat_date::date,
       (kind = 'accepted')::int,
       (kind = 'completed')::int,
       (kind = 'failed')::int,
       CASE WHEN kind = 'completed' THEN COALESCE(:processing_time_ms::bigint, 0) ELSE 0 END
FROM ledger
ON CONFLICT (stat_date) DO UPDATE SET
    total_jobs = s.total_jobs + EXCLUDED.total_jobs,
    completed_jobs = s.completed_jobs + EXCLUDED.completed_jobs,
    failed_jobs = s.failed_jobs + EXCLUDED.failed_jobs,
    sum_processing_time_ms = s.sum_processing_time_ms + EXCLUDED.sum_processing_time_ms,
    updated_at = now()
RETURNING true;

-- name: daily_totals(today, days)
-- Design query 2, served from processing_stats: at most `days` primary-key rows instead of the
-- design's 1.9 s GROUP BY over the jobs. Days without a row come back as zeros, oldest first.
SELECT d.stat_date,
       COALESCE(s.total_jobs, 0) AS total_jobs,
       COALESCE(s.completed_jobs, 0) AS completed_jobs,
       COALESCE(s.failed_jobs, 0) AS failed_jobs,
       COALESCE(s.sum_processing_time_ms, 0) AS sum_processing_time_ms,
       s.avg_processing_time_ms,
       s.error_rate
FROM (SELECT (:today::date - g) AS stat_date FROM generate_series(0, :days::int - 1) AS g) AS d
LEFT JOIN processing_stats s ON s.stat_date = d.stat_date
ORDER BY d.stat_date;

-- name: totals_from_jobs(stat_date)^
-- The same figures computed by scanning one day of the jobs table (one partition, by created_at).
WITH t AS (
    SELECT count(*)::int AS total_jobs,
           (count(*) FILTER (WHERE j.status = 'completed'))::int AS completed_jobs,
           (count(*) FILTER (WHERE j.status = 'failed'))::int AS failed_jobs,
           COALESCE(sum(j.processing_time_ms) FILTER (WHERE j.status = 'completed'), 0)::bigint
               AS sum_processing_time_ms
    FROM image_process_jobs j
    WHERE j.created_at >= (:stat_date::date)::timestamp AT TIME ZONE 'UTC'
      AND j.created_at < (:stat_date::date + 1)::timestamp AT TIME ZONE 'UTC'
)
SELECT :stat_date::date AS stat_date, t.*,
       CASE WHEN completed_jobs > 0
            THEN round(sum_processing_time_ms::numeric / completed_jobs, 2) END AS avg_processing_time_ms,
       CASE WHEN completed_jobs + failed_jobs > 0
            THEN round(100.0 * failed_jobs / (completed_jobs + failed_jobs), 2) END AS error_rate
FROM t;

-- name: lock_stats_writers()!
-- The stats writers' lock (apply_event takes it first), for a writer of user_job_counts or the ledger that
-- is not apply_event: reconcile, and retention before it reduces user_job_counts. A stats batch takes
-- users' rows in event order under it, so writing them in another order without it could deadlock.
SELECT pg_advisory_xact_lock(7270, 2);  -- shared/db/locks.py STATS

-- name: lock_stats_ledger()!
-- Held by reconcile for its transaction: apply_event's insert (ROW EXCLUSIVE) waits, so no event
-- can be counted between reading the jobs and rewriting the day. Self-conflicting: one reconcile
-- at a time. Stats events for all days wait meanwhile (one partition scan, well under a second).
LOCK TABLE stats_ledger IN SHARE ROW EXCLUSIVE MODE;

-- name: reconcile_refusal(stat_date, relation)$
-- Why a day cannot be rebuilt from the jobs (NULL: it can), `relation` naming its month's partition. The
-- partition must be attached: one retention dropped is gone, and one a retention run detached and has not
-- finished is still a table but no longer holds jobs of image_process_jobs. In the oldest attached month,
-- the one retention trims row by row up to its cutoff (a time of day), a day up to and including the day
-- of the month's oldest remaining job may have had jobs deleted. Either way the counted stats are all that
-- is left of the day.
WITH attached AS (
    SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'image_process_jobs'::regclass
)
SELECT CASE
    WHEN NOT EXISTS (SELECT 1 FROM attached WHERE name = :relation::text) THEN
        'its month''s jobs are gone (retention dropped or detached the partition)'
    WHEN NOT EXISTS (SELECT 1 FROM attached WHERE name < :relation::text)
         AND NOT EXISTS (
            SELECT 1 FROM image_process_jobs
            WHERE created_at >= (date_trunc('month', :stat_date::date))::timestamp AT TIME ZONE 'UTC'
              AND created_at < (:stat_date::date)::timestamp AT TIME ZONE 'UTC') THEN
        'it is in the oldest month kept, not after the day of its oldest remaining job (retention may have deleted jobs of it)'
END;

-- name: reconcile_day(stat_date)^
-- Rewrite one day's ledger and totals from the jobs table, in one statement (one snapshot): the
-- ledger gets exactly the (job, kind) pairs the jobs justify, so events still in flight for those
-- jobs later find their row and count nothing, and events for later transitions count once.
-- The DELETE and INSERT touch disjoint rows (unjustified vs. missing), as data-modifying CTEs must.
-- Each `accepted` row added to a day the ledger still covers is an event the consumer did not count (lost,
-- or still in flight and now to be skipped), so its user's job count goes up here as the consumer's
-- count_user would have: else the late event, finding its row, would count the user nowhere. A day older
-- than the ledger's oldest (prune_ledger removed its rows) says nothing about which events were counted:
-- its users' counts are left as they are (StatsRepository.rebuild_user_counts recounts every user).
-- Runs after lock_stats_writers, like every writer of user_job_counts.
WITH j AS MATERIALIZED (
    SELECT j.job_id, j.user_id, j.status, j.processing_time_ms
    FROM image_process_jobs j
    WHERE j.created_at >= (:stat_date::date)::timestamp AT TIME ZONE 'UTC'
      AND j.created_at < (:stat_date::date + 1)::timestamp AT TIME ZONE 'UTC'
), want AS (
    SELECT job_id, 'accepted'::varchar AS kind FROM j
    UNION ALL
    SELECT job_id, status FROM j WHERE status IN ('completed', 'failed')
), dropped AS (
    DELETE FROM stats_ledger l
    WHERE l.stat_date = :stat_date::date
      AND NOT EXISTS (SELECT 1 FROM want w WHERE w.job_id = l.job_id AND w.kind = l.kind)
), added AS (
    INSERT INTO stats_ledger (stat_date, job_id, kind)
    SELECT :stat_date::date, job_id, kind FROM want
    ON CONFLICT DO NOTHING
    RETURNING job_id, kind
), users_added AS (
    INSERT INTO user_job_counts AS c (user_id, jobs)
    SELECT j.user_id, count(*) FROM added a JOIN j USING (job_id)
    WHERE a.kind = 'accepted' AND :stat_date::date >= (SELECT min(l.stat_date) FROM stats_ledger l)
    GROUP BY j.user_id
    ON CONFLICT (user_id) DO UPDATE SET jobs = c.jobs + EXCLUDED.jobs
), t AS (
    SELECT count(*)::int AS total_jobs,
           (count(*) FILTER (WHERE status = 'completed'))::int AS completed_jobs,
           (count(*) FILTER (WHERE status = 'failed'))::int AS failed_jobs,
           COALESCE(sum(processing_time_ms) FILTER (WHERE status = 'completed'), 0)::bigint
               AS sum_processing_time_ms
    FROM j
)
INSERT INTO processing_stats AS s (stat_date, total_jobs, completed_jobs, failed_jobs, sum_processing_time_ms)
SELECT :stat_date::date, total_jobs, completed_jobs, failed_jobs, sum_processing_time_ms FROM t
ON CONFLICT (stat_date) DO UPDATE SET
    total_jobs = EXCLUDED.total_jobs,
    completed_jobs = EXCLUDED.completed_jobs,
    failed_jobs = EXCLUDED.failed_jobs,
    sum_processing_time_ms = EXCLUDED.sum_processing_time_ms,
    updated_at = now()
RETURNING s.stat_date, s.total_jobs, s.completed_jobs, s.failed_jobs, s.sum_processing_time_ms,
          s.avg_processing_time_ms, s.error_rate;

-- name: count_params(stat_date, params_hash, params)!
-- Called in the same transaction as apply_event, only when it counted an `accepted` event.
INSERT INTO params_daily_counts AS c (stat_date, params_hash, params, jobs)
VALUES (:stat_date::date, :params_hash::varchar, :params::jsonb, 1)
ON CONFLICT (stat_date, params_hash) DO UPDATE SET jobs = c.jobs + 1;

-- name: params_job_count(contains, date_from, date_to)$
-- COUNT of jobs whose params contain `contains`, over days x parameter combinations, not over jobs.
SELECT COALESCE(sum(jobs), 0)::bigint FROM params_daily_counts
WHERE params @> :contains::jsonb AND stat_date >= :date_from::date AND stat_date <= :date_to::date;

-- name: clear_params_day(stat_date)!
DELETE FROM params_daily_counts WHERE stat_date = :stat_date::date;

-- name: reconcile_params_day(stat_date)!
-- Rewrite one day of params_daily_counts from the jobs table (after clear_params_day, with reconcile_day).
INSERT INTO params_daily_counts (stat_date, params_hash, params, jobs)
SELECT :stat_date::date, params_hash, min(params::text)::jsonb, count(*)
FROM image_process_jobs
WHERE created_at >= (:stat_date::date)::timestamp AT TIME ZONE 'UTC'
  AND created_at < (:stat_date::date + 1)::timestamp AT TIME ZONE 'UTC'
GROUP BY params_hash;

-- name: params_counts_from_jobs(contains, date_from, date_to)$
-- The same count straight from the jobs (tests and reconciliation checks only: it scans).
SELECT count(*) FROM image_process_jobs
WHERE params @> :contains::jsonb
  AND created_at >= (:date_from::date)::timestamp AT TIME ZONE 'UTC'
  AND created_at < (:date_to::date + 1)::timestamp AT TIME ZONE 'UTC';

-- name: prune_ledger(before)$
-- The ledger only deduplicates events of days that can still receive them (see the stats service).
WITH gone AS (DELETE FROM stats_ledger WHERE stat_date < :before::date RETURNING 1) SELECT count(*) FROM gone;

-- name: prune_params_counts(before)!
DELETE FROM params_daily_counts WHERE stat_date < :before::date;

-- name: count_user(user_id)!
-- Called in the same transaction as apply_event, only when it counted an `accepted` event.
INSERT INTO user_job_counts AS c (user_id, jobs) VALUES (:user_id::varchar, 1)
ON CONFLICT (user_id) DO UPDATE SET jobs = c.jobs + 1;

-- name: rebuild_user_counts()!
-- Recompute every user's count from the jobs (repair; one GROUP BY over the table).
WITH fresh AS (SELECT user_id, count(*) AS jobs FROM image_process_jobs GROUP BY user_id),
     upd AS (
        INSERT INTO user_job_counts AS c (user_id, jobs) SELECT user_id, jobs FROM fresh
        ON CONFLICT (user_id) DO UPDATE SET jobs = EXCLUDED.jobs
     )
UPDATE user_job_counts c SET jobs = 0 WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.user_id = c.user_id);

-- name: user_summary(user_id, since)^
-- One user's jobs since `since` by status, and their mean processing time: what `GET /v1/stats` shows
-- a (non-admin) user. Walks that user's rows of ix_jobs_user_created only.
SELECT count(*)::int AS total_jobs,
       (count(*) FILTER (WHERE j.status = 'pending'))::int AS pending_jobs,
       (count(*) FILTER (WHERE j.status = 'processing'))::int AS processing_jobs,
       (count(*) FILTER (WHERE j.status = 'completed'))::int AS completed_jobs,
       (count(*) FILTER (WHERE j.status = 'failed'))::int AS failed_jobs,
       round(avg(j.processing_time_ms) FILTER (WHERE j.status = 'completed'), 2) AS avg_processing_time_ms
FROM image_process_jobs j
WHERE j.user_id = :user_id AND j.created_at >= :since;

-- The per-user quartiles of design query 6 over all time, without ranking every user (migration 0011).
-- NTILE(4) over n rows ordered by (jobs, user_id) puts the first n % 4 buckets at n / 4 + 1 rows and the
-- rest at n / 4, so every bound is the row at a known position of ix_user_job_counts_rank, n is kept in
-- user_job_counts_total by triggers, and a row's quartile is the number of quartile first rows at or
-- before it. The same answer as user_job_quartiles_all.

-- name: user_quartile_bounds()
-- Each non-empty quartile: its size, its first row (min_jobs, first_user) and its largest count. The first
-- rows are found by stepping `size` rows on from the previous one (3/4 of the index read in all); the
-- largest count is one backward probe from the next quartile's first row.
WITH RECURSIVE sizes AS MATERIALIZED (
    SELECT q, t.users / 4 + (q <= t.users % 4)::int AS size, t.users AS total
    FROM user_job_counts_total t, generate_series(1, 4) AS q
), lo(q, jobs, user_id) AS (
    (SELECT 1, c.jobs, c.user_id FROM user_job_counts c WHERE c.jobs > 0 ORDER BY c.jobs, c.user_id LIMIT 1)
    UNION ALL
    SELECT lo.q + 1, nx.jobs, nx.user_id
    FROM lo JOIN sizes s ON s.q = lo.q
    CROSS JOIN LATERAL (
        SELECT c.jobs, c.user_id FROM user_job_counts c
        WHERE c.jobs > 0 AND (c.jobs, c.user_id) >= (lo.jobs, lo.user_id)
        ORDER BY c.jobs, c.user_id OFFSET s.size LIMIT 1) nx
    WHERE lo.q < 4 AND s.size > 0
)
SELECT l.q AS quartile, s.size AS users, s.total AS total_users, l.jobs AS min_jobs, l.user_id AS first_user,
       (SELECT c.jobs FROM user_job_counts c
        WHERE c.jobs > 0
          AND (c.jobs, c.user_id) < (COALESCE(nx.jobs, 9223372036854775807), COALESCE(nx.user_id, ''))
        ORDER BY c.jobs DESC, c.user_id DESC LIMIT 1) AS max_jobs
FROM lo l
JOIN sizes s ON s.q = l.q
LEFT JOIN lo nx ON nx.q = l.q + 1
WHERE s.size > 0
ORDER BY l.q;

-- name: save_user_quartiles(total_users, bounds)$
-- The stats service's snapshot of user_quartile_bounds (migration 0015): one row, replaced.
INSERT INTO user_quartile_snapshot (id, computed_at, total_users, bounds)
VALUES (true, now(), :total_users, :bounds)
ON CONFLICT (id) DO UPDATE
SET computed_at = EXCLUDED.computed_at, total_users = EXCLUDED.total_users, bounds = EXCLUDED.bounds
RETURNING computed_at;

-- name: user_quartile_snapshot()^
-- Its age by the database's clock (the one that stamped it), not the caller's.
SELECT computed_at, total_users, bounds,
       greatest(extract(epoch FROM clock_timestamp() - computed_at), 0)::float8 AS age_s
FROM user_quartile_snapshot WHERE id;

-- name: user_quartile(user_id, first_jobs, first_users)^
-- One user's count and quartile (no row: no jobs), given user_quartile_bounds' first rows. Against live
-- bounds the count is at least 1 (the first row is the smallest); against a snapshot's (migration 0015) a
-- user who since sorts before its first row is in the first quartile, hence greatest(1, ...).
SELECT c.user_id, c.jobs AS job_count,
       greatest(1, (SELECT count(*) FROM unnest(:first_jobs::bigint[], :first_users::varchar[]) AS b(jobs, user_id)
                    WHERE (b.jobs, b.user_id) <= (c.jobs, c.user_id)))::int AS quartile
FROM user_job_counts c
WHERE c.user_id = :user_id::varchar AND c.jobs > 0;

-- name: top_users(limit, first_jobs, first_users)
-- The busiest users, as user_job_quartiles_all orders them, with their quartiles as in user_quartile.
SELECT c.user_id, c.jobs AS job_count,
       greatest(1, (SELECT count(*) FROM unnest(:first_jobs::bigint[], :first_users::varchar[]) AS b(jobs, user_id)
                    WHERE (b.jobs, b.user_id) <= (c.jobs, c.user_id)))::int AS quartile
FROM user_job_counts c
WHERE c.jobs > 0
ORDER BY c.jobs DESC, c.user_id
LIMIT :limit;
