-- Jobs. Every lookup by id also names created_at (the UUIDv7's own timestamp), so PostgreSQL prunes
-- to one monthly partition and probes one primary-key index instead of one per month.
-- Rows carry their tag names (sorted) from rmbg_job_tags (migration 0010), which the planner inlines as
-- a correlated subquery on image_tags' primary key: the same plan as writing that subquery here.
-- Tag names are matched with `name >= x AND name <= x`, not `name = x`: pg_trgm 1.6 lets its GIN and
-- GiST indexes answer `=` too, and the planner picked them over the unique B-tree at equal estimated
-- cost; with 5k tags sharing the trigrams of 'product' that lookup took 1.3-2.5 ms instead of 0.01 ms
-- (EXPLAIN ANALYZE, 400k-job bench). Range operators are B-tree only.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: insert_job(job_id, created_at, user_id, original_path, original_ext, status, error_message, image_width, image_height, file_size_kb, params, params_hash, content_sha256, model_name, original_bytes, source)$
-- Insert once per job id; returns true when this call inserted it, NULL when it already existed.
-- The user row is created on first sight (username = user_id) in the same statement. original_path is
-- NULL unless the original is not under its derived key (migration 0014: a rejected upload's s3:// name).
WITH job AS (
    INSERT INTO image_process_jobs (
        job_id, created_at, user_id, original_path, original_ext, status, completed_at, error_message,
        image_width, image_height, file_size_kb, params, params_hash, content_sha256,
        model_name, original_bytes, source)
    VALUES (
        :job_id, :created_at, :user_id, :original_path, :original_ext, :status,
        CASE WHEN :status::varchar = 'failed' THEN now() END, :error_message,
        :image_width, :image_height, :file_size_kb, :params, :params_hash, :content_sha256,
        :model_name, :original_bytes, :source)
    ON CONFLICT DO NOTHING
    RETURNING user_id
), new_user AS (
    -- DO NOTHING, not DO UPDATE: a busy user's row is neither locked nor rewritten per job.
    INSERT INTO users (user_id, username)
    SELECT user_id, user_id FROM job
    ON CONFLICT (user_id) DO NOTHING
)
SELECT true FROM job;

-- name: create_tags(names)!
-- Only names not yet known go to the INSERT: ON CONFLICT would still draw a serial value for each
-- known name. Sorted, so two transactions adding the same new tags lock them in the same order.
INSERT INTO tags (name)
SELECT n FROM unnest(:names::varchar[]) AS n
WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.name >= n AND t.name <= n)
ORDER BY n
ON CONFLICT (name) DO NOTHING;

-- name: link_tags(job_id, created_at, user_id, names)!
-- A separate statement from create_tags: its fresh snapshot sees tags another transaction created
-- concurrently (which create_tags skipped on conflict after waiting for that commit). The user's own
-- vocabulary (user_tags, migration 0008) is kept in the same statement; DO NOTHING, so a tag the user
-- has used before costs one primary-key probe and no write.
WITH named AS MATERIALIZED (
    SELECT t.tag_id FROM unnest(:names::varchar[]) AS n JOIN tags t ON t.name >= n AND t.name <= n
), linked AS (
    INSERT INTO image_tags (job_id, created_at, tag_id)
    SELECT :job_id::uuid, :created_at::timestamptz, tag_id FROM named
    ON CONFLICT DO NOTHING
)
INSERT INTO user_tags (user_id, tag_id)
SELECT :user_id::varchar, tag_id FROM named
ON CONFLICT DO NOTHING;

-- name: get_job(job_id, created_at)^
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.job_id = :job_id AND j.created_at = :created_at;

-- name: mark_processing(job_id, created_at, started_at, attempt)^
-- Only from pending; NULL when the job is elsewhere (a late or repeated event changes nothing).
UPDATE image_process_jobs AS j
SET status = 'processing', started_at = :started_at,
    attempts = GREATEST(j.attempts, :attempt::smallint), updated_at = now()
WHERE j.job_id = :job_id AND j.created_at = :created_at AND j.status = 'pending'
RETURNING j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags;

-- name: mark_completed(job_id, created_at, cutout_format, mask_bytes, processed_bytes, model_name, model_revision, processing_time_ms, completed_at, reused)^
-- Only from pending or processing (pending: a reused result or a lost "started" event). The mask and
-- cut-out keys derive from the row (migration 0014): cutout_format is the one input it lacked.
UPDATE image_process_jobs AS j
SET status = 'completed', cutout_format = :cutout_format,
    mask_bytes = :mask_bytes, processed_bytes = :processed_bytes, model_name = :model_name,
    model_revision = :model_revision, processing_time_ms = :processing_time_ms,
    completed_at = :completed_at, reused_result = :reused, updated_at = now()
WHERE j.job_id = :job_id AND j.created_at = :created_at AND j.status IN ('pending', 'processing')
RETURNING j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags;

-- name: mark_failed(job_id, created_at, error_message, completed_at)^
UPDATE image_process_jobs AS j
SET status = 'failed', error_message = :error_message, completed_at = :completed_at, updated_at = now()
WHERE j.job_id = :job_id AND j.created_at = :created_at AND j.status IN ('pending', 'processing')
RETURNING j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags;

-- name: record_retry(job_id, created_at, seen_updated_at)$
-- The sweeper's re-queue: one more attempt, and the stuck clock restarts. Not for finished jobs, and only
-- if the row is as the sweeper saw it (compare-and-set on updated_at): two persister replicas sweeping at
-- once spend one attempt, not two, and a job that moved meanwhile is left alone.
UPDATE image_process_jobs AS j
SET attempts = j.attempts + 1, updated_at = now()
WHERE j.job_id = :job_id AND j.created_at = :created_at AND j.status IN ('pending', 'processing')
  AND j.updated_at = :seen_updated_at
RETURNING j.attempts;

-- name: find_stuck(updated_before, limit)
-- Served by ix_jobs_active_updated (partial: only pending/processing rows, a small index).
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.status IN ('pending', 'processing') AND j.updated_at < :updated_before
ORDER BY j.updated_at
LIMIT :limit;

-- name: find_reusable_result(content_sha256, model_name, params_hash)^
-- Served by ix_jobs_content (content_sha256); every partition is probed (no time predicate), one probe each.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.content_sha256 = :content_sha256 AND j.model_name = :model_name
  AND j.params_hash = :params_hash AND j.status = 'completed'
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT 1;

-- name: recent_completed(user_id, limit)
-- Design query 1. ix_jobs_user_created (user_id, created_at) returns rows in this order; partitions are read
-- newest first (ordered Append), so LIMIT stops after the first partition that has enough.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.user_id = :user_id AND j.status = 'completed'
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: page_completed_first(limit)
-- Design query 3, first page.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.status = 'completed'
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: page_completed_after(before_created_at, before_job_id, limit)
-- Design query 3, next pages. The design's `created_at < cursor` skips rows sharing the cursor's
-- timestamp; the row comparison with job_id as tie-breaker does not, and it is an index condition on
-- ix_jobs_created_at, newest first. The redundant `created_at <= ` lets partition pruning drop newer months.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.status = 'completed'
  AND j.created_at <= :before_created_at
  AND (j.created_at, j.job_id) < (:before_created_at, :before_job_id)
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: by_params(contains, limit)
-- Design query 4, containment. ix_jobs_params (jsonb_path_ops) serves a selective value; for a
-- common one the planner walks ix_jobs_created_at newest first and stops at LIMIT (as measured,
-- the GIN index loses at 10% of rows).
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.params @> :contains
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: user_job_quartiles(since)
-- Design query 6. NTILE over the per-user counts; ties broken by user_id so the answer is stable.
-- `since` (NULL: all time) prunes partitions, which is what keeps this off the 0.95 s full scan.
WITH counts AS (
    SELECT j.user_id, count(*) AS job_count
    FROM image_process_jobs j
    WHERE j.created_at >= COALESCE(:since::timestamptz, '-infinity'::timestamptz)
    GROUP BY j.user_id
)
SELECT user_id, job_count, ntile(4) OVER (ORDER BY job_count, user_id) AS quartile
FROM counts
ORDER BY job_count DESC, user_id;

-- name: user_job_quartiles_all()
-- Design query 6 over all time, from user_job_counts (one row per user, kept by the stats service).
SELECT user_id, jobs AS job_count, ntile(4) OVER (ORDER BY jobs, user_id) AS quartile
FROM user_job_counts
WHERE jobs > 0
ORDER BY jobs DESC, user_id;

-- name: list_jobs(status, params, created_from, created_to, cursor_created_at, cursor_job_id, limit)
-- The API's filtered history over all users, newest first; NULL means "no filter". The filters are
-- written so that a generic plan (asyncpg prepares each statement once per connection, and after 5
-- runs PostgreSQL may reuse a generic plan) still walks ix_jobs_created_at newest first: time bounds
-- are plain comparisons, and the IS NULL guards only filter rows already read in order.
-- The user filter has its own statement below: an `IS NULL OR user_id = x` guard cannot use an
-- index in a generic plan, and after the 400k-job bench had run it for a heavy user, a user with 30
-- jobs took 48 ms instead of 0.6 ms.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE (:status::varchar IS NULL OR j.status = :status::varchar)
  AND (:params::jsonb IS NULL OR j.params @> :params::jsonb)
  AND j.created_at >= COALESCE(:created_from::timestamptz, '-infinity'::timestamptz)
  AND j.created_at < COALESCE(:created_to::timestamptz, 'infinity'::timestamptz)
  AND j.created_at <= COALESCE(:cursor_created_at::timestamptz, 'infinity'::timestamptz)
  AND (:cursor_created_at::timestamptz IS NULL
       OR (j.created_at, j.job_id) < (:cursor_created_at::timestamptz, :cursor_job_id::uuid))
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: list_jobs_by_hashes(hashes, status, created_from, created_to, cursor_created_at, cursor_job_id, limit)
-- list_jobs for a params value that params_daily_counts finds rare (JobsRepository.list_jobs): per matching
-- params_hash, the newest rows of ix_jobs_params_hash_created under the same filters and cursor, then the
-- newest of those. Each hash names one canonical combination, so the containment is params_share's;
-- list_jobs itself walks ix_jobs_created_at newest first and filters, which for a value on 170 of 10M jobs
-- read 0.5-0.9 s warm, 14 s cold (BENCHMARKS.md).
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM unnest(:hashes::varchar[]) AS h(params_hash)
CROSS JOIN LATERAL (
    SELECT * FROM image_process_jobs x
    WHERE x.params_hash = h.params_hash
      AND (:status::varchar IS NULL OR x.status = :status::varchar)
      AND x.created_at >= COALESCE(:created_from::timestamptz, '-infinity'::timestamptz)
      AND x.created_at < COALESCE(:created_to::timestamptz, 'infinity'::timestamptz)
      AND x.created_at <= COALESCE(:cursor_created_at::timestamptz, 'infinity'::timestamptz)
      AND (:cursor_created_at::timestamptz IS NULL
           OR (x.created_at, x.job_id) < (:cursor_created_at::timestamptz, :cursor_job_id::uuid))
    ORDER BY x.created_at DESC, x.job_id DESC
    LIMIT :limit
) j
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: list_jobs_for_user(user_id, status, params, created_from, created_to, cursor_created_at, cursor_job_id, limit)
-- The same for one user, read from ix_jobs_user_created newest first (one backward range per month).
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
WHERE j.user_id = :user_id
  AND (:status::varchar IS NULL OR j.status = :status::varchar)
  AND (:params::jsonb IS NULL OR j.params @> :params::jsonb)
  AND j.created_at >= COALESCE(:created_from::timestamptz, '-infinity'::timestamptz)
  AND j.created_at < COALESCE(:created_to::timestamptz, 'infinity'::timestamptz)
  AND j.created_at <= COALESCE(:cursor_created_at::timestamptz, 'infinity'::timestamptz)
  AND (:cursor_created_at::timestamptz IS NULL
       OR (j.created_at, j.job_id) < (:cursor_created_at::timestamptz, :cursor_job_id::uuid))
ORDER BY j.created_at DESC, j.job_id DESC
LIMIT :limit;

-- name: list_jobs_by_tag(tag, user_id, status, params, created_from, created_to, cursor_created_at, cursor_job_id, limit)
-- The same with a tag (and optionally a user): driven from image_tags' (tag_id, created_at DESC)
-- index newest first, so a rare tag does not walk every job; each hit is one primary-key probe into
-- its month's partition. The user guard only filters, which is bounded by the tag's own rows.
-- The jobs table is named first: PostgreSQL locks tables in the order a statement names them, and every
-- path takes jobs before tags (rmbg_retire_month since 0020 too); named after image_tags, this listing
-- deadlocked with a retirement (reproduced). The planner still joins in the order above.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM image_process_jobs j
JOIN image_tags it ON j.job_id = it.job_id AND j.created_at = it.created_at
JOIN tags t ON it.tag_id = t.tag_id
WHERE t.name >= :tag::varchar AND t.name <= :tag::varchar
  AND (:user_id::varchar IS NULL OR j.user_id = :user_id::varchar)
  AND (:status::varchar IS NULL OR j.status = :status::varchar)
  AND (:params::jsonb IS NULL OR j.params @> :params::jsonb)
  AND it.created_at >= COALESCE(:created_from::timestamptz, '-infinity'::timestamptz)
  AND it.created_at < COALESCE(:created_to::timestamptz, 'infinity'::timestamptz)
  AND it.created_at <= COALESCE(:cursor_created_at::timestamptz, 'infinity'::timestamptz)
  AND (:cursor_created_at::timestamptz IS NULL
       OR (it.created_at, it.job_id) < (:cursor_created_at::timestamptz, :cursor_job_id::uuid))
ORDER BY it.created_at DESC, it.job_id DESC
LIMIT :limit;

-- name: mask_wanted(content_sha256, mask_path, except_job_id)$
-- Whether another job of the same image may use this mask (before a failed job's mask is deleted): one
-- that completed with it, or one still under way (it may reuse it). Served by ix_jobs_content: one probe
-- per partition, a handful of rows each.
SELECT EXISTS (
    SELECT 1 FROM image_process_jobs j
    WHERE j.content_sha256 = :content_sha256 AND j.job_id <> :except_job_id
      AND (j.status IN ('pending', 'processing')
           OR (j.status = 'completed'
               AND rmbg_mask_key(j.mask_path, j.cutout_format, j.content_sha256, j.model_name, j.model_revision,
                                 j.params) = :mask_path))
);

-- name: mark_queued(job_id, created_at, queue_partition, queue_offset)!
-- The broker acknowledged the job's request at this position. updated_at is left alone: being queued
-- is not progress, and the position is what the sweeper judges a waiting job by.
UPDATE image_process_jobs AS j
SET queue_partition = :queue_partition, queue_offset = :queue_offset
WHERE j.job_id = :job_id AND j.created_at = :created_at AND j.status IN ('pending', 'processing');

-- name: object_deletion_epoch()$
-- Moves on every time retention deletes objects (migration 0007); last_value alone repeats after the
-- sequence's first nextval, is_called tells the two apart.
SELECT last_value + is_called::int FROM object_deletion_epoch;

-- name: backlog(rank)^
-- Unfinished jobs, and when the rank-th longest-waiting of them last moved, for ingest's backpressure.
-- Not the oldest: a few stuck jobs (the sweeper's business) must not close intake; a real queue has many
-- old jobs. Both from ix_jobs_active_updated (partial: only pending/processing rows, in updated_at order).
SELECT (SELECT count(*) FROM image_process_jobs j WHERE j.status IN ('pending', 'processing')) AS jobs,
       (SELECT j.updated_at FROM image_process_jobs j WHERE j.status IN ('pending', 'processing')
        ORDER BY j.updated_at OFFSET :rank - 1 LIMIT 1) AS waiting_since;
