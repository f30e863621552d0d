"""Retention reads a retired month as job rows, and checks them against the remaining jobs in one statement.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

rmbg_retired_objects (0003) grouped a detached month by content with three array_agg(DISTINCT ...) per
group (one sort each), and retention then sent the batch's hashes back as a 5,000-element array to
find the contents a remaining job still uses (one index probe per content and partition, and a custom
plan costed element by element). Together they were the object pass of a month's retention: 11.9 s of
17.7 s at 10M jobs (BENCHMARKS.md).

rmbg_retired_rows(month, after_sha, max_rows) returns the detached month's job rows (content hash and
the three keys) with a hash above ``after_sha``, up to and including every row of the content that the
``max_rows``-th row has, in hash order: a batch never splits a content, and the next batch starts after
the last hash returned. It is the only part that names the detached table (format('%I') as in 0003); the
check against the remaining jobs and the keys to delete are one static statement in retention.sql
(retired_unreferenced), planned once per connection: it scans each remaining partition's content index
over the batch's own hash range once and looks each retired row up in it. rmbg_retired_objects has no
caller left and is dropped (downgrade brings it back as 0003 wrote it).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RETIRED_ROWS = """
CREATE FUNCTION rmbg_retired_rows(month date, after_sha bytea, max_rows int)
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


# As migration 0003 created it.
_RETIRED_OBJECTS = """
CREATE FUNCTION rmbg_retired_objects(month date, after_sha bytea, max_contents int)
RETURNS TABLE (content_sha256 bytea, paths text[])
LANGUAGE plpgsql AS $fn$
BEGIN
    -- One row per content, keyset over content_sha256 (the detached table keeps its ix_jobs_content),
    -- so a month of a million jobs is read in bounded pieces and no content is split across two.
    RETURN QUERY EXECUTE format(
        'SELECT content_sha256, array_remove(array_agg(DISTINCT original_path::text) '
        '|| array_agg(DISTINCT mask_path::text) || array_agg(DISTINCT processed_path::text), NULL) '
        'FROM %I WHERE content_sha256 > $1 GROUP BY content_sha256 ORDER BY content_sha256 LIMIT $2',
        'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM'))
    USING after_sha, max_contents;
END
$fn$
"""


def upgrade() -> None:
    op.execute(_RETIRED_ROWS)
    op.execute("DROP FUNCTION IF EXISTS rmbg_retired_objects(date, bytea, int)")


def downgrade() -> None:
    op.execute(_RETIRED_OBJECTS)
    op.execute("DROP FUNCTION IF EXISTS rmbg_retired_rows(date, bytea, int)")
