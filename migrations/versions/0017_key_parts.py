"""Retention derives a retired month's object keys with one model slug per model, not three regexes per row.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03

A month's retention at 10M jobs spent most of its object pass deriving keys (BENCHMARKS.md, "A month's
retention"): EXPLAIN ANALYZE of one 5,000-row batch of retention.sql retired_unreferenced took 51 ms in
rmbg_retired_rows even with the rows on neighbouring pages, of about 95 ms in all. Timed per function over
200,000 rows of a month: rmbg_original_key 0.6 us a row, rmbg_mask_key 4.4 us, rmbg_cutout_key 3.6 us, and
of those rmbg_model_slug (two regexp_replace calls) 2.9 us, made twice per row (mask and cut-out), although
a month holds one or two models. encode(content_sha256, 'hex') is made six times per row.

The key rules now sit in functions of their parts: rmbg_original_key_of(path, ext, sha_hex),
rmbg_mask_key_of(path, format, sha_hex, model_slug, params) and rmbg_cutout_key_of(path, format, sha_hex,
model_slug, params_hash). rmbg_original_key, rmbg_mask_key and rmbg_cutout_key (0014) keep their signatures
and results and call them (still LANGUAGE sql, IMMUTABLE, one expression: inlined), so every reader is
unchanged, and tests/shared/db/test_keys_sql.py still holds them equal to ObjectKeys. rmbg_retired_rows
reads a batch's rows once, makes each row's hex once and each distinct model's slug once, and joins.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each mirrors one function of shared/storage/keys.py, as 0014's did: the same expressions with the hex of
# the content hash and the model slug passed in.
_PARTS = [
    """
    CREATE FUNCTION rmbg_original_key_of(original_path text, original_ext text, sha_hex text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(original_path, 'original/' || left(sha_hex, 2) || '/' || sha_hex || '.' || original_ext)
    $fn$
    """,
    """
    CREATE FUNCTION rmbg_mask_key_of(mask_path text, cutout_format text, sha_hex text, model_slug text,
                                     params jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(mask_path, CASE WHEN cutout_format IS NOT NULL THEN
        'mask/' || left(sha_hex, 2) || '/' || sha_hex || '/' || model_slug || '/' || rmbg_threshold_tag(params)
        || '.png' END)
    $fn$
    """,
    """
    CREATE FUNCTION rmbg_cutout_key_of(processed_path text, cutout_format text, sha_hex text, model_slug text,
                                       params_hash text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(processed_path, CASE WHEN cutout_format IS NOT NULL THEN
        'processed/' || left(sha_hex, 2) || '/' || sha_hex || '/' || model_slug || '/' || params_hash || '-'
        || cutout_format || '.' || CASE cutout_format WHEN 'png' THEN 'png' ELSE 'webp' END END)
    $fn$
    """,
]

_WHOLE = [
    """
    CREATE OR REPLACE FUNCTION rmbg_original_key(original_path text, original_ext text, content_sha256 bytea)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT rmbg_original_key_of(original_path, original_ext, encode(content_sha256, 'hex'))
    $fn$
    """,
    """
    CREATE OR REPLACE FUNCTION rmbg_mask_key(mask_path text, cutout_format text, content_sha256 bytea,
                                             model_name text, model_revision text, params jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT rmbg_mask_key_of(mask_path, cutout_format, encode(content_sha256, 'hex'),
                            rmbg_model_slug(model_name, model_revision), params)
    $fn$
    """,
    """
    CREATE OR REPLACE FUNCTION rmbg_cutout_key(processed_path text, cutout_format text, content_sha256 bytea,
                                               model_name text, model_revision text, params_hash text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT rmbg_cutout_key_of(processed_path, cutout_format, encode(content_sha256, 'hex'),
                              rmbg_model_slug(model_name, model_revision), params_hash)
    $fn$
    """,
]

# As 0014 created them.
_WHOLE_0014 = [
    """
    CREATE OR REPLACE FUNCTION rmbg_original_key(original_path text, original_ext text, content_sha256 bytea)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(original_path, 'original/' || left(encode(content_sha256, 'hex'), 2) || '/'
        || encode(content_sha256, 'hex') || '.' || original_ext)
    $fn$
    """,
    """
    CREATE OR REPLACE FUNCTION rmbg_mask_key(mask_path text, cutout_format text, content_sha256 bytea,
                                             model_name text, model_revision text, params jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(mask_path, CASE WHEN cutout_format IS NOT NULL THEN
        'mask/' || left(encode(content_sha256, 'hex'), 2) || '/' || encode(content_sha256, 'hex') || '/'
        || rmbg_model_slug(model_name, model_revision) || '/' || rmbg_threshold_tag(params) || '.png' END)
    $fn$
    """,
    """
    CREATE OR REPLACE FUNCTION rmbg_cutout_key(processed_path text, cutout_format text, content_sha256 bytea,
                                               model_name text, model_revision text, params_hash text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(processed_path, CASE WHEN cutout_format IS NOT NULL THEN
        'processed/' || left(encode(content_sha256, 'hex'), 2) || '/' || encode(content_sha256, 'hex') || '/'
        || rmbg_model_slug(model_name, model_revision) || '/' || params_hash || '-' || cutout_format || '.'
        || CASE cutout_format WHEN 'png' THEN 'png' ELSE 'webp' END END)
    $fn$
    """,
]

# The batch's rows once (the hash range as 0013 bounds it: no content split), then the slug of each
# distinct model once; a NULL revision and '' give the same slug (rmbg_model_slug), hence the coalesce.
_RETIRED_ROWS = """
CREATE OR REPLACE FUNCTION rmbg_retired_rows(month date, after_sha bytea, max_rows int)
RETURNS TABLE (content_sha256 bytea, original_path text, mask_path text, processed_path text)
LANGUAGE plpgsql ROWS 5000 AS $fn$
DECLARE
    jobs_part text := 'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM');
BEGIN
    RETURN QUERY EXECUTE format(
        'WITH r AS MATERIALIZED ('
        '  SELECT r.content_sha256, encode(r.content_sha256, ''hex'') AS sha_hex, r.original_path::text, '
        '         r.original_ext::text, r.mask_path::text, r.processed_path::text, r.cutout_format::text, '
        '         r.model_name::text, coalesce(r.model_revision, '''')::text AS rev, r.params, r.params_hash::text '
        '  FROM %1$I r WHERE r.content_sha256 > $1 AND r.content_sha256 <= ('
        '    SELECT s.content_sha256 FROM (SELECT content_sha256 FROM %1$I WHERE content_sha256 > $1 '
        '    ORDER BY content_sha256 LIMIT $2) s ORDER BY s.content_sha256 DESC LIMIT 1)'
        '), m AS MATERIALIZED ('
        '  SELECT d.model_name, d.rev, rmbg_model_slug(d.model_name, d.rev) AS slug '
        '  FROM (SELECT DISTINCT r.model_name, r.rev FROM r) d'
        ') '
        'SELECT r.content_sha256, rmbg_original_key_of(r.original_path, r.original_ext, r.sha_hex), '
        'rmbg_mask_key_of(r.mask_path, r.cutout_format, r.sha_hex, m.slug, r.params), '
        'rmbg_cutout_key_of(r.processed_path, r.cutout_format, r.sha_hex, m.slug, r.params_hash) '
        'FROM r JOIN m ON m.model_name = r.model_name AND m.rev = r.rev '
        'ORDER BY r.content_sha256',
        jobs_part)
    USING after_sha, max_rows;
END
$fn$
"""

# As 0014 created it.
_RETIRED_ROWS_0014 = """
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


def upgrade() -> None:
    for ddl in (*_PARTS, *_WHOLE, _RETIRED_ROWS):
        op.execute(ddl)


def downgrade() -> None:
    for ddl in (_RETIRED_ROWS_0014, *_WHOLE_0014):
        op.execute(ddl)
    for name in ("rmbg_cutout_key_of", "rmbg_mask_key_of", "rmbg_original_key_of"):
        op.execute(f"DROP FUNCTION IF EXISTS {name}")
