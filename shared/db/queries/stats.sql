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

-- name: lock_stats_ledger()!
-- Held by reconcile for its transaction: apply_event's insert (ROW EXCLUSIVE) waits, so no event
-- can be counted between reading the jobs and rewriting the day. Self-conflicting: one reconcile
-- at a time. Stats events for all days wait meanwhile (one partition scan, well under a second).
LOCK TABLE stats_ledger IN SHARE ROW EXCLUSIVE MODE;

-- name: reconcile_day(stat_date)^
-- Rewrite one day's ledger and totals from the jobs table, in one statement (one snapshot): the
-- ledger gets exactly the (job, kind) pairs the jobs justify, so events still in flight for those
-- jobs later find their row and count nothing, and events for later transitions count once.
-- The DELETE and INSERT touch disjoint rows (unjustified vs. missing), as data-modifying CTEs must.
WITH j AS MATERIALIZED (
    SELECT j.job_id, j.status, j.processing_time_ms
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
