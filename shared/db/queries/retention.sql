-- Retention and consistency checks. The DDL is in PL/pgSQL functions (migration 0003).
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: retire_month(month)$
SELECT rmbg_retire_month(:month::date);

-- name: retired_months()
SELECT m AS month FROM rmbg_retired_months() AS m;

-- A retired month's objects (migration 0018, rmbg/maintenance/retention.py has the order): mark the run,
-- let the objects lock go round once, check the whole month in one statement without the lock, then
-- delete per batch, under the lock, the doomed contents no new job has claimed.

-- name: lock_retention()$
-- Session lock of one retention run: the run's marks, claims and doomed keys are its own.
SELECT pg_try_advisory_lock(7270, 4);  -- shared/db/locks.py RETENTION

-- name: unlock_retention()$
SELECT pg_advisory_unlock(7270, 4);  -- shared/db/locks.py RETENTION

-- name: clear_run()!
-- What a run leaves (also one that was interrupted): with no run marked, inserts record no claims.
WITH claims AS (DELETE FROM retention_claims) DELETE FROM retention_runs;

-- name: mark_run(month)!
-- From the commit of this mark on, every insert of jobs records their contents (trg_jobs_retention_claim).
INSERT INTO retention_runs (month) VALUES (:month::date);

-- name: doom_month(month)^
-- The whole detached month checked against the remaining jobs in one statement (rmbg_retention_doom):
-- retention_doomed then holds each unused content with its keys. Returns the doomed contents and the
-- distinct keys kept because a remaining job has their content.
SELECT doomed, kept FROM rmbg_retention_doom(:month::date);

-- name: doomed_batch(after_sha, max_contents)^
-- Up to max_contents doomed contents after after_sha, in hash order; run under lock_objects_exclusive. A
-- content a job inserted since the run was marked has claimed is kept (its keys counted), the others'
-- keys are returned to delete (distinct: the keys of one content are distinct, and name their content).
WITH b AS MATERIALIZED (
    SELECT d.content_sha256, d.paths,
           EXISTS (SELECT FROM retention_claims c WHERE c.content_sha256 = d.content_sha256) AS claimed
    FROM retention_doomed d
    WHERE d.content_sha256 > :after_sha::bytea
    ORDER BY d.content_sha256 LIMIT :max_contents::int
)
SELECT (SELECT b.content_sha256 FROM b ORDER BY b.content_sha256 DESC LIMIT 1) AS last_sha,
       (SELECT coalesce(sum(cardinality(b.paths)), 0) FROM b WHERE b.claimed)::int AS kept,
       ARRAY(SELECT unnest(b.paths) FROM b WHERE NOT b.claimed) AS doomed;

-- name: empty_doomed()!
TRUNCATE retention_doomed;

-- name: drop_retired(month)!
SELECT rmbg_drop_retired(:month::date);

-- name: count_before(cutoff, month_from)$
-- Rows of the cutoff's own month that are older than the cutoff (deleted row by row).
SELECT count(*) FROM image_process_jobs WHERE created_at >= :month_from AND created_at < :cutoff;

-- name: count_month(month_from, month_to)$
SELECT count(*) FROM image_process_jobs WHERE created_at >= :month_from AND created_at < :month_to;

-- name: delete_before(cutoff, month_from, max_rows)
-- One bounded batch; image_tags rows go with their jobs (ON DELETE CASCADE), and the users' job
-- counts are reduced in the same statement.
WITH gone AS (
    DELETE FROM image_process_jobs j
    USING (SELECT job_id, created_at FROM image_process_jobs
           WHERE created_at >= :month_from AND created_at < :cutoff
           ORDER BY created_at LIMIT :max_rows) old
    WHERE j.job_id = old.job_id AND j.created_at = old.created_at
    RETURNING j.user_id, j.content_sha256,
              array_remove(ARRAY[
                  rmbg_original_key(j.original_path, j.original_ext, j.content_sha256),
                  rmbg_mask_key(j.mask_path, j.cutout_format, j.content_sha256, j.model_name, j.model_revision,
                                j.params),
                  rmbg_cutout_key(j.processed_path, j.cutout_format, j.content_sha256, j.model_name,
                                  j.model_revision, j.params_hash)], NULL) AS paths
), counted AS (
    UPDATE user_job_counts u SET jobs = u.jobs - d.n
    FROM (SELECT user_id, count(*) AS n FROM gone GROUP BY user_id) d
    WHERE u.user_id = d.user_id
)
SELECT content_sha256, paths FROM gone;

-- name: referenced_contents(shas)
-- Which of these contents a remaining job still uses (ix_jobs_content, one probe per partition).
SELECT DISTINCT content_sha256 FROM image_process_jobs WHERE content_sha256 = ANY(:shas::bytea[]);

-- name: paths_for_contents(shas)
-- Every object key the remaining jobs reference for these contents.
-- The keys derive from the row where it stores none (migration 0014).
SELECT k.path FROM image_process_jobs j
CROSS JOIN LATERAL (VALUES
    (rmbg_original_key(j.original_path, j.original_ext, j.content_sha256)),
    (rmbg_mask_key(j.mask_path, j.cutout_format, j.content_sha256, j.model_name, j.model_revision, j.params)),
    (rmbg_cutout_key(j.processed_path, j.cutout_format, j.content_sha256, j.model_name, j.model_revision,
                     j.params_hash))) k(path)
WHERE j.content_sha256 = ANY(:shas::bytea[]) AND k.path IS NOT NULL
GROUP BY k.path;

-- name: jobs_in_shard(low, high)
-- The jobs whose content hash starts with one byte (fsck walks 256 shards, one index range each).
SELECT job_id, created_at, status, content_sha256,
       rmbg_original_key(original_path, original_ext, content_sha256) AS original_path,
       rmbg_mask_key(mask_path, cutout_format, content_sha256, model_name, model_revision, params) AS mask_path,
       rmbg_cutout_key(processed_path, cutout_format, content_sha256, model_name, model_revision,
                       params_hash) AS processed_path,
       params, params_hash
FROM image_process_jobs WHERE content_sha256 >= :low::bytea AND content_sha256 < :high::bytea;

-- name: lock_objects_exclusive()!
-- Retention holds this while it deletes objects (and once, briefly, as a barrier before a month's check);
-- intake holds it shared while it inserts its row, so an upload of the same content either lands before
-- the barrier (and the check sees its row), claims its content (migration 0018), or comes after the delete
-- (and stores the object again).
SELECT pg_advisory_xact_lock(7270, 3);  -- shared/db/locks.py OBJECTS

-- name: lock_objects_shared()!
SELECT pg_advisory_xact_lock_shared(7270, 3);  -- shared/db/locks.py OBJECTS

-- name: bump_object_deletion_epoch()$
-- Drawn under lock_objects_exclusive after objects were deleted: an intake that read the epoch before
-- (and may have found its original still there) sees the change and stores it again.
SELECT nextval('object_deletion_epoch');
