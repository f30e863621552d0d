"""Retention checks a retired month in one statement without the objects lock; intake claims what it reuses.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03

A month's retention checked its detached rows against the remaining jobs in batches of about 5,000 rows,
each under the exclusive objects lock (so that an intake of the same content could not slip between the
check and the delete): 288 statements for July at 10M jobs, each reading its rows in hash order all over
the month's heap (BENCHMARKS.md, "A month's retention"). One statement for the whole month reads the month
sequentially and the remaining jobs' content index once, but holding the lock that long would stall
every upload for the whole check. So the check now runs without the lock, and a new intake tells
retention which contents it reused instead:

- retention_runs: the month being retired while its objects are deleted. While a row is here, every
  statement that inserts jobs records their contents in retention_claims (the statement trigger below;
  nothing is recorded, and one probe of this empty table is the whole cost, when no run is on).
- retention_claims: the contents of jobs inserted while a run is on. Logged: a claim lost in a crash
  could let a run delete an object a new job uses.
- retention_doomed: what the run's one check found (rmbg_retention_doom): each content of the month that
  no remaining job uses, with its distinct object keys. UNLOGGED (no WAL for a month's keys; a crash
  empties it, and a run that finds it empty deletes less, never more: orphans are `rmbg fsck --repair`'s).

The order (rmbg/maintenance/retention.py): mark the run; take the objects lock exclusively once and let
it go (every intake that held it shared has committed, and every later one sees the mark); check the month
in one statement; then, per batch and under the exclusive lock as before, delete the doomed keys of the
contents nobody claimed. An intake that inserted before the barrier is visible to the check; one after it
left a claim, which the batch reads under the same lock that intake held shared. The claim is a trigger on
the jobs table, as the webhook's is (0009), so no writer of job rows can forget it. Transition tables
need a statement trigger, and they work on the partitioned parent (every partition, present or future).

rmbg_retired_rows (0013, 0014, 0017) has no caller left and is dropped; downgrade brings 0017's back.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = [
    """
    CREATE TABLE retention_runs (
        month      date        PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE retention_claims (
        content_sha256 bytea       NOT NULL,
        claimed_at     timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX ix_retention_claims ON retention_claims (content_sha256)",
    """
    CREATE UNLOGGED TABLE retention_doomed (
        content_sha256 bytea  PRIMARY KEY,
        paths          text[] NOT NULL
    )
    """,
    # READ COMMITTED (intake's isolation) gives this statement a snapshot taken after the insert's
    # objects lock was granted, so it sees a run marked before retention's barrier.
    """
    CREATE FUNCTION rmbg_retention_claim() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        IF EXISTS (SELECT FROM retention_runs) THEN
            INSERT INTO retention_claims (content_sha256) SELECT DISTINCT content_sha256 FROM added;
        END IF;
        RETURN NULL;
    END
    $fn$
    """,
    """
    CREATE TRIGGER trg_jobs_retention_claim
        AFTER INSERT ON image_process_jobs REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION rmbg_retention_claim()
    """,
]

# The whole detached month in one statement: its rows once in physical order, each row's hex once and each
# distinct model's slug once (as 0017's batches did), the contents still used by a remaining job by one
# hashed semi-join (the month's distinct hashes hashed, the remaining partitions' content indexes read
# once), then the unused contents' distinct keys into retention_doomed. Returns how many contents are
# doomed and how many distinct keys stay because a remaining job has their content. work_mem: the month's
# hashes (1.1M at 10M jobs, about 100 MB hashed) stay in memory; 4 MB would spill the hash to disk in
# batches. A failed upload's original names the upstream's object (s3://...): never ours to delete.
_DOOM = """
CREATE FUNCTION rmbg_retention_doom(month date) RETURNS TABLE (doomed bigint, kept bigint)
LANGUAGE plpgsql SET work_mem = '256MB' AS $fn$
DECLARE
    jobs_part text := 'image_process_jobs_' || to_char(month, '"y"YYYY"m"MM');
BEGIN
    TRUNCATE retention_doomed;
    RETURN QUERY EXECUTE format(
        'WITH r AS MATERIALIZED ('
        '  SELECT r.content_sha256, encode(r.content_sha256, ''hex'') AS sha_hex, r.original_path::text, '
        '         r.original_ext::text, r.mask_path::text, r.processed_path::text, r.cutout_format::text, '
        '         r.model_name::text, coalesce(r.model_revision, '''')::text AS rev, r.params, r.params_hash::text '
        '  FROM %1$I r'
        '), m AS MATERIALIZED ('
        '  SELECT d.model_name, d.rev, rmbg_model_slug(d.model_name, d.rev) AS slug '
        '  FROM (SELECT DISTINCT r.model_name, r.rev FROM r) d'
        '), used AS MATERIALIZED ('
        '  SELECT DISTINCT j.content_sha256 FROM image_process_jobs j '
        '  WHERE j.content_sha256 IN (SELECT r.content_sha256 FROM r)'
        '), k AS MATERIALIZED ('
        '  SELECT DISTINCT r.content_sha256, p.path, u.content_sha256 IS NOT NULL AS used '
        '  FROM r JOIN m ON m.model_name = r.model_name AND m.rev = r.rev '
        '  LEFT JOIN used u ON u.content_sha256 = r.content_sha256 '
        '  CROSS JOIN LATERAL (VALUES (rmbg_original_key_of(r.original_path, r.original_ext, r.sha_hex)), '
        '    (rmbg_mask_key_of(r.mask_path, r.cutout_format, r.sha_hex, m.slug, r.params)), '
        '    (rmbg_cutout_key_of(r.processed_path, r.cutout_format, r.sha_hex, m.slug, r.params_hash))) p(path) '
        '  WHERE p.path NOT LIKE ''s3://%%'''
        '), ins AS ('
        '  INSERT INTO retention_doomed (content_sha256, paths) '
        '  SELECT k.content_sha256, array_agg(k.path) FROM k WHERE NOT k.used GROUP BY k.content_sha256 '
        '  RETURNING 1'
        ') '
        'SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM k WHERE k.used)',
        jobs_part);
END
$fn$
"""


def _retired_rows_0017() -> str:
    """rmbg_retired_rows as 0017 created it, read from 0017's file beside this one (not copied here)."""
    spec = importlib.util.spec_from_file_location("_rmbg_0017", Path(__file__).with_name("0017_key_parts.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, "_RETIRED_ROWS")).replace("CREATE OR REPLACE", "CREATE", 1)  # noqa: B009


def upgrade() -> None:
    for ddl in (*_TABLES, _DOOM):
        op.execute(ddl)
    op.execute("DROP FUNCTION IF EXISTS rmbg_retired_rows(date, bytea, int)")


def downgrade() -> None:
    op.execute(_retired_rows_0017())
    for ddl in (
        "DROP FUNCTION IF EXISTS rmbg_retention_doom(date)",
        "DROP TRIGGER IF EXISTS trg_jobs_retention_claim ON image_process_jobs",
        "DROP FUNCTION IF EXISTS rmbg_retention_claim()",
        "DROP TABLE IF EXISTS retention_doomed",
        "DROP TABLE IF EXISTS retention_claims",
        "DROP TABLE IF EXISTS retention_runs",
    ):
        op.execute(ddl)
