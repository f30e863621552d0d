-- Retention and consistency checks. The DDL is in PL/pgSQL functions (migration 0003).
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: retire_month(month)$
SELECT rmbg_retire_month(:month::date);

-- name: retired_months()
SELECT m AS month FROM rmbg_retired_months() AS m;

-- name: retired_unreferenced(month, after_sha, max_rows)^
-- One batch of a detached month (rmbg_retired_rows: about max_rows job rows after after_sha, in hash
-- order, no content split), checked against the remaining jobs in this one statement; run under
-- lock_objects_exclusive. Returns the batch's last hash (NULL: the month is done), how many keys of the
-- batch a remaining job still uses (kept), and the keys no remaining job uses (doomed, with repeats when
-- several retired jobs named one key). The EXISTS carries the batch's hash range as the index bound, so it
-- is planned as one range scan of each partition's ix_jobs_content, hashed, and a lookup per row (the 0.2%
-- of the hash space a batch covers; ~41k index tuples at 1M or 10M jobs), not as a probe per content and
-- partition, nor as a client-sent array. A content a remaining job has keeps the keys that job derives
-- (its original, and its own mask and cut-out), not every key of the content: a retired job's mask or
-- cut-out of another model or other params would otherwise outlive every row that names it. A content with
-- a pending or processing job keeps all its keys, since such a job's keys are not derivable before its
-- result and it may be about to reuse a stored mask. A failed upload's original_path names the upstream's
-- object (s3://...): not ours to delete, not counted.
WITH r AS MATERIALIZED (
    SELECT * FROM rmbg_retired_rows(:month::date, :after_sha::bytea, :max_rows::int)
), hi AS MATERIALIZED (
    SELECT content_sha256 AS sha FROM r ORDER BY content_sha256 DESC LIMIT 1
), flagged AS MATERIALIZED (
    SELECT r.*, EXISTS (
        SELECT 1 FROM image_process_jobs j
        WHERE j.content_sha256 = r.content_sha256
          AND j.content_sha256 > :after_sha::bytea AND j.content_sha256 <= (SELECT sha FROM hi)
    ) AS used
    FROM r
), holders AS MATERIALIZED (
    -- The remaining jobs of the contents in use (a few per cent of a batch's rows), read once, with each
    -- row's hex made once and each distinct model's slug once, as rmbg_retired_rows does (migration 0017).
    SELECT j.content_sha256, encode(j.content_sha256, 'hex') AS sha_hex, j.status, j.original_path::text,
           j.original_ext::text, j.mask_path::text, j.processed_path::text, j.cutout_format::text,
           j.model_name::text, coalesce(j.model_revision, '')::text AS rev, j.params, j.params_hash::text
    FROM image_process_jobs j
    WHERE j.content_sha256 IN (SELECT content_sha256 FROM flagged WHERE used)
      AND j.content_sha256 > :after_sha::bytea AND j.content_sha256 <= (SELECT sha FROM hi)
), holder_models AS MATERIALIZED (
    SELECT d.model_name, d.rev, rmbg_model_slug(d.model_name, d.rev) AS slug
    FROM (SELECT DISTINCT model_name, rev FROM holders) d
), still AS MATERIALIZED (
    SELECT k.path FROM holders j JOIN holder_models m ON m.model_name = j.model_name AND m.rev = j.rev
    CROSS JOIN LATERAL (VALUES
        (rmbg_original_key_of(j.original_path, j.original_ext, j.sha_hex)),
        (rmbg_mask_key_of(j.mask_path, j.cutout_format, j.sha_hex, m.slug, j.params)),
        (rmbg_cutout_key_of(j.processed_path, j.cutout_format, j.sha_hex, m.slug, j.params_hash))) k(path)
    WHERE k.path IS NOT NULL
    UNION
    SELECT k.path FROM flagged f
    CROSS JOIN LATERAL (VALUES (f.original_path), (f.mask_path), (f.processed_path)) k(path)
    WHERE f.content_sha256 IN (SELECT content_sha256 FROM holders WHERE status IN ('pending', 'processing'))
      AND k.path IS NOT NULL
), keys AS MATERIALIZED (
    SELECT k.path, f.used AND k.path IN (SELECT path FROM still) AS kept
    FROM flagged f
    CROSS JOIN LATERAL (VALUES (f.original_path), (f.mask_path), (f.processed_path)) k(path)
    WHERE k.path NOT LIKE 's3://%'
)
SELECT (SELECT sha FROM hi) AS last_sha,
       (SELECT count(DISTINCT path) FROM keys WHERE kept)::int AS kept,
       ARRAY(SELECT path FROM keys WHERE NOT kept) AS doomed;

-- name: drop_retired(month)!
SELECT rmbg_drop_retired(:month::date);

-- name: count_before(cutoff, month_from)$
-- Rows of the cutoff's own month that are older than the cutoff (deleted row by row).
SELECT count(*) FROM image_process_jobs WHERE created_at >= :month_from AND created_at < :cutoff;

-- name: count_month(month_from, month_to)$
SELECT count(*) FROM image_process_jobs WHERE created_at >= :month_from AND created_at < :month_to;

-- name: delete_before(cutoff, month_from, max_rows)
-- One bounded batch; image_tags rows go with their jobs (ON DELETE CASCADE), and the users' job
-- counts are reduced in the same statement, never below 0 (a count short of an uncounted event must not
-- fail retention: migration 0019). Run after lock_stats_writers, in its transaction.
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
    UPDATE user_job_counts u SET jobs = GREATEST(u.jobs - d.n, 0)
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

-- name: unfinished_contents(shas)
-- Which of these contents a pending or processing job has: its mask and cut-out keys are not derivable
-- yet (its model revision comes with its result), so nothing under such a content is deleted
-- (ObjectsRepository.keys_in_use, for fsck and the boundary month's trim).
SELECT DISTINCT content_sha256 FROM image_process_jobs
WHERE content_sha256 = ANY(:shas::bytea[]) AND status IN ('pending', 'processing');

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
-- Retention holds this while it checks references and deletes objects; intake holds it shared while it
-- stores an original and inserts its row, so an upload of the same content either lands before the
-- check (and is seen) or after the delete (and stores the object again).
SELECT pg_advisory_xact_lock(7270, 3);  -- shared/db/locks.py OBJECTS

-- name: lock_objects_shared()!
SELECT pg_advisory_xact_lock_shared(7270, 3);  -- shared/db/locks.py OBJECTS

-- name: bump_object_deletion_epoch()$
-- Drawn under lock_objects_exclusive after objects were deleted: an intake that read the epoch before
-- (and may have found its original still there) sees the change and stores it again.
SELECT nextval('object_deletion_epoch');
