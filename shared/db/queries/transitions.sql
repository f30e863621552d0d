-- Batched job transitions (issue 10 part 4): many jobs per round trip, the same status guards as
-- mark_processing / mark_completed / mark_failed in jobs.sql, so a repeated or late transition changes
-- nothing. Each statement takes one array per column (unnest zips them into rows, NULL-padded if a caller
-- passed arrays of different lengths: the repository never does) and returns the rows that moved, with
-- their tags, as the single statements do (the persister announces each moved row); a job that is
-- absent was not in a state it may leave (already there, or further on).
-- The join probes each job's month partition by primary key (run-time pruning on created_at per row).
-- Callers pass each job id once and in job_id order (the repository does): UPDATE ... FROM updates a row
-- once even when several source rows match, and two batches that lock rows in the same order cannot
-- deadlock each other. The status guard (0001, its allowed moves in the trigger's WHEN since 0018) is
-- checked per row; the webhook trigger (0018) runs once per statement, for the rows it ended.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: mark_processing_many(job_ids, created_ats, started_ats, attempts)
-- Only from pending, as mark_processing.
UPDATE image_process_jobs AS j
SET status = 'processing', started_at = b.started_at,
    attempts = GREATEST(j.attempts, b.attempt), updated_at = now()
FROM unnest(:job_ids::uuid[], :created_ats::timestamptz[], :started_ats::timestamptz[], :attempts::smallint[])
     AS b(job_id, created_at, started_at, attempt)
WHERE j.job_id = b.job_id AND j.created_at = b.created_at AND j.status = 'pending'
RETURNING j.*,
          (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags;

-- name: mark_completed_many(job_ids, created_ats, cutout_formats, mask_bytes, processed_bytes, model_names, model_revisions, processing_times_ms, completed_ats, reused)
-- Only from pending or processing, as mark_completed (the keys derive from the row, as there).
UPDATE image_process_jobs AS j
SET status = 'completed', cutout_format = b.cutout_format,
    mask_bytes = b.mask_bytes, processed_bytes = b.processed_bytes, model_name = b.model_name,
    model_revision = b.model_revision, processing_time_ms = b.processing_time_ms,
    completed_at = b.completed_at, reused_result = b.reused, updated_at = now()
FROM unnest(:job_ids::uuid[], :created_ats::timestamptz[], :cutout_formats::varchar[],
            :mask_bytes::integer[], :processed_bytes::integer[], :model_names::varchar[],
            :model_revisions::varchar[], :processing_times_ms::integer[], :completed_ats::timestamptz[],
            :reused::boolean[])
     AS b(job_id, created_at, cutout_format, mask_bytes, processed_bytes, model_name,
          model_revision, processing_time_ms, completed_at, reused)
WHERE j.job_id = b.job_id AND j.created_at = b.created_at AND j.status IN ('pending', 'processing')
RETURNING j.*,
          (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags;

-- name: mark_failed_many(job_ids, created_ats, error_messages, completed_ats)
-- Only from pending or processing, as mark_failed.
UPDATE image_process_jobs AS j
SET status = 'failed', error_message = b.error_message, completed_at = b.completed_at, updated_at = now()
FROM unnest(:job_ids::uuid[], :created_ats::timestamptz[], :error_messages::text[], :completed_ats::timestamptz[])
     AS b(job_id, created_at, error_message, completed_at)
WHERE j.job_id = b.job_id AND j.created_at = b.created_at AND j.status IN ('pending', 'processing')
RETURNING j.*,
          (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags;

-- name: get_jobs(job_ids, created_ats)
-- get_job for many ids at once (the persister reads a polled batch's jobs in one round trip); each id
-- probes its month's partition by primary key. Ids with no row are absent.
SELECT j.*,
       (SELECT names FROM rmbg_job_tags(j.job_id, j.created_at)) AS tags
FROM unnest(:job_ids::uuid[], :created_ats::timestamptz[]) AS b(job_id, created_at)
JOIN image_process_jobs AS j ON j.job_id = b.job_id AND j.created_at = b.created_at;
