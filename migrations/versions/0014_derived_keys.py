"""Object keys are derived from the columns that determine them, not stored in every row (issue 10 part 5).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

A job row carried its three object keys in full: 328 of its 606 bytes at 10M jobs (BENCHMARKS.md), each
key repeating the 64-hex content hash and the model slug. Every key is a function of columns the row
already has (shared/storage/keys.py ObjectKeys): the original of the content hash and the image's file
extension, the mask of hash, model, revision and threshold (params), the cut-out of hash, model, revision,
params_hash and the cut-out format. So a row now stores the two short inputs it lacked:

- ``original_ext`` (``jpg``, ``png``, ``webp``...), written at intake;
- ``cutout_format`` (a CutoutFormat value), written when the job completes: the service default may
  change later, so the format the cut-out was made in is recorded, not re-derived from settings;

and ``original_path`` / ``mask_path`` / ``processed_path`` become overrides: NULL when the key is the derived
one (every row written from now on), set where it is not. The one such case today is a rejected upload's
original, which names the upstream's object (``s3://bucket/key``). Rows written before this migration keep
their stored keys, which equal the derivation; they leave with retention, so no table rewrite or backfill
is needed (a NULL costs a bit in the row's null bitmap).

Readers get the keys from JobRecord.from_row (Python, shared/db/models.py) or, in set-based SQL
(retention, fsck, backup manifests), from the functions below, which mirror ObjectKeys expression by
expression; tests/shared/db/test_keys_sql.py checks them against ObjectKeys over odd model names,
revisions, thresholds (half-way values: both sides round half to even on the same float8) and every
cut-out format.

The completed-row check (0001's ck_jobs_completed_fields) now accepts a derived mask and cut-out key, and
a row must name its original one way or the other. Both are added NOT VALID: every existing row
satisfied the stricter check this replaces, and validating would scan the whole table while this
migration holds its ACCESS EXCLUSIVE lock. ``ALTER TABLE image_process_jobs VALIDATE CONSTRAINT ...``
can run at any time later (it takes SHARE UPDATE EXCLUSIVE, which blocks no reads or writes).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# LANGUAGE sql, IMMUTABLE, one SELECT of one expression each: the planner inlines them into the calling
# statement. Quoted bodies, not SQL-standard RETURN bodies, which need PostgreSQL 14.
# Each mirrors one function of shared/storage/keys.py (named in its comment).
_FUNCTIONS = [
    # model_slug: _SLUG.sub("_", name).strip("_") + "@" + _SLUG.sub("_", revision or "norev")[:12]
    """
    CREATE FUNCTION rmbg_model_slug(model_name text, model_revision text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT btrim(regexp_replace(model_name, '[^A-Za-z0-9._-]+', '_', 'g'), '_') || '@'
        || left(regexp_replace(coalesce(nullif(model_revision, ''), 'norev'), '[^A-Za-z0-9._-]+', '_', 'g'), 12)
    $fn$
    """,
    # ObjectKeys.threshold_tag: "soft", or f"t{round(threshold * 1000):04d}" (round half to even, as rint)
    """
    CREATE FUNCTION rmbg_threshold_tag(params jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN params->'threshold' IS NULL OR params->'threshold' = 'null'::jsonb THEN 'soft'
                ELSE 't' || lpad(round((params->>'threshold')::float8 * 1000)::bigint::text, 4, '0') END
    $fn$
    """,
    # ObjectKeys.original, with the stored override first
    """
    CREATE FUNCTION rmbg_original_key(original_path text, original_ext text, content_sha256 bytea) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(original_path, 'original/' || left(encode(content_sha256, 'hex'), 2) || '/'
        || encode(content_sha256, 'hex') || '.' || original_ext)
    $fn$
    """,
    # ObjectKeys.job_mask; a job has a mask key once it completed (cutout_format is written then)
    """
    CREATE FUNCTION rmbg_mask_key(mask_path text, cutout_format text, content_sha256 bytea, model_name text,
                                  model_revision text, params jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(mask_path, CASE WHEN cutout_format IS NOT NULL THEN
        'mask/' || left(encode(content_sha256, 'hex'), 2) || '/' || encode(content_sha256, 'hex') || '/'
        || rmbg_model_slug(model_name, model_revision) || '/' || rmbg_threshold_tag(params) || '.png' END)
    $fn$
    """,
    # ObjectKeys.cutout: <params_hash>-<format>.<extension>, the extension from CUTOUT_CONTENT_TYPES
    """
    CREATE FUNCTION rmbg_cutout_key(processed_path text, cutout_format text, content_sha256 bytea,
                                    model_name text, model_revision text, params_hash text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(processed_path, CASE WHEN cutout_format IS NOT NULL THEN
        'processed/' || left(encode(content_sha256, 'hex'), 2) || '/' || encode(content_sha256, 'hex') || '/'
        || rmbg_model_slug(model_name, model_revision) || '/' || params_hash || '-' || cutout_format || '.'
        || CASE cutout_format WHEN 'png' THEN 'png' ELSE 'webp' END END)
    $fn$
    """,
]

# rmbg_retired_rows (0013) with the keys derived: retention.sql retired_unreferenced is unchanged.
_RETIRED_ROWS = """
CREATE OR REPLACE FUNCTION rmbg_retired_rows(month date, after_sha bytea, max_rows int)
RETURNS TABLE (content_sha256 bytea, original_path text, mask_path text, processed_path text)
LANGUAGE plpgsql ROWS 5000 AS $fn$
DECLARE
    jobs_part text := 'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM');
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT r.content_sha256, '
        'rmbg_original_key(r.original_path, r.original_ext, r.content_sha256), '
        'rmbg_mask_key(r.mask_path, r.cutout_format, r.content_sha256, r.model_name, r.model_revision, r.params), '
        'rmbg_cutout_key(r.processed_path, r.cutout_format, r.content_sha256, r.model_name, r.model_revision, '
        'r.params_hash) '
        'FROM %1$I r WHERE r.content_sha256 > $1 AND r.content_sha256 <= ('
        'SELECT s.content_sha256 FROM (SELECT content_sha256 FROM %1$I WHERE content_sha256 > $1 '
        'ORDER BY content_sha256 LIMIT $2) s ORDER BY s.content_sha256 DESC LIMIT 1) '
        'ORDER BY r.content_sha256',
        jobs_part)
    USING after_sha, max_rows;
END
$fn$
"""

# As migration 0013 created it.
_RETIRED_ROWS_0013 = """
CREATE OR REPLACE FUNCTION rmbg_retired_rows(month date, after_sha bytea, max_rows int)
RETURNS TABLE (content_sha256 bytea, original_path text, mask_path text, processed_path text)
LANGUAGE plpgsql ROWS 5000 AS $fn$
DECLARE
    jobs_part text := 'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM');
BEGIN
    -- The upper bound is the hash of the max_rows-th row after after_sha (an index-only scan of the
    -- detached table's ix_jobs_content); every row up to it is returned, so no content is split.
    RETURN QUERY EXECUTE format(
        'SELECT r.content_sha256, r.original_path::text, r.mask_path::text, r.processed_path::text '
        'FROM %1$I r WHERE r.content_sha256 > $1 AND r.content_sha256 <= ('
        'SELECT s.content_sha256 FROM (SELECT content_sha256 FROM %1$I WHERE content_sha256 > $1 '
        'ORDER BY content_sha256 LIMIT $2) s ORDER BY s.content_sha256 DESC LIMIT 1) '
        'ORDER BY r.content_sha256',
        jobs_part)
    USING after_sha, max_rows;
END
$fn$
"""

_COMPLETED_FIELDS_0001 = (
    "status <> 'completed' OR (completed_at IS NOT NULL AND mask_path IS NOT NULL "
    "AND processed_path IS NOT NULL AND processing_time_ms IS NOT NULL)"
)


# A month retention detached and has not dropped yet (an interrupted run, finished by the next) is a table of
# its own: ALTER on the partitioned table does not reach it, and rmbg_retired_rows reads these columns.
_DETACHED_ADD = """
DO $do$
DECLARE
    m date;
BEGIN
    FOR m IN SELECT * FROM rmbg_retired_months() LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN original_ext varchar(8), ADD COLUMN cutout_format varchar(16)',
                       'image_process_jobs_' || to_char(m, '"y"YYYY"m"MM'));
    END LOOP;
END
$do$
"""

# The downgrade's way back for those tables: the derived keys stored, then the columns dropped.
_DETACHED_DROP = """
DO $do$
DECLARE
    m date;
    t text;
BEGIN
    FOR m IN SELECT * FROM rmbg_retired_months() LOOP
        t := 'image_process_jobs_' || to_char(m, '"y"YYYY"m"MM');
        EXECUTE format(
            'UPDATE %I SET original_path = rmbg_original_key(original_path, original_ext, content_sha256), '
            'mask_path = rmbg_mask_key(mask_path, cutout_format, content_sha256, model_name, model_revision, params), '
            'processed_path = rmbg_cutout_key(processed_path, cutout_format, content_sha256, model_name, '
            'model_revision, params_hash) WHERE original_path IS NULL OR cutout_format IS NOT NULL', t);
        EXECUTE format('ALTER TABLE %I DROP COLUMN original_ext, DROP COLUMN cutout_format', t);
    END LOOP;
END
$do$
"""


def upgrade() -> None:
    # Adding nullable columns without a default and dropping NOT NULL change the catalog only.
    op.execute(
        "ALTER TABLE image_process_jobs ADD COLUMN original_ext varchar(8), ADD COLUMN cutout_format varchar(16)"
    )
    op.execute(_DETACHED_ADD)
    op.execute("ALTER TABLE image_process_jobs ALTER COLUMN original_path DROP NOT NULL")
    op.execute("ALTER TABLE image_process_jobs DROP CONSTRAINT ck_jobs_completed_fields")
    op.execute(
        "ALTER TABLE image_process_jobs ADD CONSTRAINT ck_jobs_completed_fields CHECK ("
        "status <> 'completed' OR (completed_at IS NOT NULL AND processing_time_ms IS NOT NULL"
        " AND (cutout_format IS NOT NULL OR (mask_path IS NOT NULL AND processed_path IS NOT NULL)))) NOT VALID"
    )
    op.execute(
        "ALTER TABLE image_process_jobs ADD CONSTRAINT ck_jobs_original_named CHECK ("
        "original_path IS NOT NULL OR original_ext IS NOT NULL) NOT VALID"
    )
    for ddl in _FUNCTIONS:
        op.execute(ddl)
    op.execute(_RETIRED_ROWS)


def downgrade() -> None:
    # Rows written since the upgrade get their derived keys stored back before the columns go.
    op.execute(_RETIRED_ROWS_0013)
    op.execute("SET LOCAL rmbg.allow_terminal_update = on")
    op.execute(
        "UPDATE image_process_jobs SET "
        "original_path = rmbg_original_key(original_path, original_ext, content_sha256), "
        "mask_path = rmbg_mask_key(mask_path, cutout_format, content_sha256, model_name, model_revision, params), "
        "processed_path = rmbg_cutout_key(processed_path, cutout_format, content_sha256, model_name, "
        "model_revision, params_hash) "
        "WHERE original_path IS NULL OR (cutout_format IS NOT NULL AND (mask_path IS NULL OR processed_path IS NULL))"
    )
    op.execute(_DETACHED_DROP)
    for name in ("rmbg_cutout_key", "rmbg_mask_key", "rmbg_original_key", "rmbg_threshold_tag", "rmbg_model_slug"):
        op.execute(f"DROP FUNCTION IF EXISTS {name} CASCADE")
    op.execute("ALTER TABLE image_process_jobs DROP CONSTRAINT ck_jobs_original_named")
    op.execute("ALTER TABLE image_process_jobs DROP CONSTRAINT ck_jobs_completed_fields")
    op.execute(
        f"ALTER TABLE image_process_jobs ADD CONSTRAINT ck_jobs_completed_fields CHECK ({_COMPLETED_FIELDS_0001})"
    )
    op.execute("ALTER TABLE image_process_jobs ALTER COLUMN original_path SET NOT NULL")
    op.execute("ALTER TABLE image_process_jobs DROP COLUMN cutout_format, DROP COLUMN original_ext")
