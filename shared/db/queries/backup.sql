-- Backups and restores (rmbg/maintenance/backup.py): what a backup's manifest records about the rows, and
-- the walk over every job's object keys that checks a restored database against its manifest.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: backup_job_counts()
-- Jobs by status, recorded in the manifest beside the object list (a restore to the backup's end should
-- find at least these).
SELECT status::text AS status, count(*)::bigint AS jobs
FROM image_process_jobs
GROUP BY status
ORDER BY status;

-- name: backup_stats_totals()^
-- processing_stats summed over every day: what the stats service had counted.
SELECT count(*)::bigint AS days, coalesce(sum(total_jobs), 0)::bigint AS total_jobs,
       coalesce(sum(completed_jobs), 0)::bigint AS completed_jobs, coalesce(sum(failed_jobs), 0)::bigint AS failed_jobs
FROM processing_stats;

-- name: restore_object_page(after_created, after_job, max_rows)
-- One keyset page of jobs with their object keys, oldest first; the first page starts after
-- ('-infinity', the nil UUID).
SELECT job_id, created_at, rmbg_original_key(original_path, original_ext, content_sha256) AS original_path,
       rmbg_mask_key(mask_path, cutout_format, content_sha256, model_name, model_revision, params) AS mask_path,
       rmbg_cutout_key(processed_path, cutout_format, content_sha256, model_name, model_revision,
                       params_hash) AS processed_path
FROM image_process_jobs
WHERE (created_at, job_id) > (:after_created::timestamptz, :after_job::uuid)
ORDER BY created_at, job_id
LIMIT :max_rows::int;
