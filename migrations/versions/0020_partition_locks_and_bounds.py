"""Retirement that takes the jobs table before the tags table, and partition bounds in any DateStyle.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06

Two faults a review found (2026-12-06):

- rmbg_retire_month (0005, 0019) began with DROP TABLE of the month's image_tags partition, which locks the
  image_tags parent exclusively, and reached the jobs table only at its DETACH, at the end. Every other path
  goes the other way: intake inserts the job and then links its tags, and every transition and read returns
  the job with its tags (rmbg_job_tags). An intake between its insert and its tags, or a transition between
  its UPDATE and its RETURNING, then waited on the tags lock while the DETACH waited on its jobs lock:
  a deadlock, reproduced, that aborted the month's retirement or the intake. The function now takes the
  stats writers' lock, then the jobs table, then the tags table, each exclusively, and only then counts,
  subtracts, drops and detaches. The two tables are held for the count and the subtraction (the seconds a
  million-row month takes); before, the tags table alone was, which held up every statement that returns
  a job's tags just the same. A count taken under the lock also subtracts exactly the rows detached.
- rmbg_ensure_partitions (0001) wrote each bound with format('%L', timestamptz): the session's DateStyle
  and TimeZone spelled it. Under a non-ISO DateStyle the text carries a zone abbreviation that PostgreSQL
  reads back by its own table (CST as US Central, IST as Israel): with TimeZone Asia/Shanghai and DateStyle
  'SQL, DMY' a month began at 14:00 UTC, and its first 14 hours had no partition. The bounds are now
  written as zone-free UTC literals.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RETIRE = """
CREATE OR REPLACE FUNCTION rmbg_retire_month(month date) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    suffix text := to_char(month, '"y"YYYY"m"MM');
    jobs_part text := 'image_process_jobs_' || suffix;
    tags_part text := 'image_tags_' || suffix;
    attached boolean;
    n bigint := 0;
BEGIN
    -- The locks first, in the order every other path takes them: the stats writers' (shared/db/locks.py
    -- STATS: a stats batch takes it before any table), then jobs, then tags.
    PERFORM pg_advisory_xact_lock(7270, 2);
    LOCK TABLE image_process_jobs IN ACCESS EXCLUSIVE MODE;
    LOCK TABLE image_tags IN ACCESS EXCLUSIVE MODE;
    attached := to_regclass(jobs_part) IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(jobs_part));
    IF attached THEN
        EXECUTE format('SELECT count(*) FROM %I', jobs_part) INTO n;
        EXECUTE format(
            'UPDATE user_job_counts u SET jobs = GREATEST(u.jobs - d.n, 0) '
            'FROM (SELECT user_id, count(*) AS n FROM %I GROUP BY user_id) d WHERE u.user_id = d.user_id',
            jobs_part);
    END IF;
    IF to_regclass(tags_part) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %I', tags_part);
    END IF;
    IF attached THEN
        EXECUTE format('ALTER TABLE image_process_jobs DETACH PARTITION %I', jobs_part);
    END IF;
    RETURN n;
END
$fn$
"""

# 0019's function, for the downgrade.
_RETIRE_0019 = """
CREATE OR REPLACE FUNCTION rmbg_retire_month(month date) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    suffix text := to_char(month, '"y"YYYY"m"MM');
    jobs_part text := 'image_process_jobs_' || suffix;
    tags_part text := 'image_tags_' || suffix;
    n bigint := 0;
BEGIN
    IF to_regclass(tags_part) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %I', tags_part);
    END IF;
    IF to_regclass(jobs_part) IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(jobs_part)) THEN
        EXECUTE format('SELECT count(*) FROM %I', jobs_part) INTO n;
        PERFORM pg_advisory_xact_lock(7270, 2);  -- shared/db/locks.py STATS
        EXECUTE format(
            'UPDATE user_job_counts u SET jobs = GREATEST(u.jobs - d.n, 0) '
            'FROM (SELECT user_id, count(*) AS n FROM %I GROUP BY user_id) d WHERE u.user_id = d.user_id',
            jobs_part);
        EXECUTE format('ALTER TABLE image_process_jobs DETACH PARTITION %I', jobs_part);
    END IF;
    RETURN n;
END
$fn$
"""

# {bounds} is where the two versions differ: 0001 passed the timestamptz values to %L.
_ENSURE = """
CREATE OR REPLACE FUNCTION rmbg_ensure_partitions(p_start date, p_months integer) RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
DECLARE
    first_month date := date_trunc('month', p_start::timestamp)::date;
    m           date;
    lo          {bound_type};
    hi          {bound_type};
    parent      text;
    child       text;
BEGIN
    IF p_months IS NULL OR p_months < 1 OR p_months > 240 THEN
        RAISE EXCEPTION 'rmbg_ensure_partitions: months must be 1..240, got %', p_months
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(7270, 1);
    FOR i IN 0 .. p_months - 1 LOOP
        m  := (first_month + make_interval(months => i))::date;
        {bounds}
        -- Jobs first: the image_tags partition's foreign key refers to the jobs table.
        FOREACH parent IN ARRAY ARRAY['image_process_jobs', 'image_tags'] LOOP
            child := parent || to_char(m, '"_y"YYYY"m"MM');
            IF to_regclass(quote_ident(child)) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               child, parent, lo, hi);
                RETURN NEXT child;
            END IF;
        END LOOP;
    END LOOP;
END
$fn$
"""
# to_char of a date spells digits only, whatever DateStyle says; '+00' names UTC in any TimeZone.
_UTC_LITERALS = """lo := to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00';
        hi := to_char((m + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00';"""
_SESSION_SPELLED = """lo := m::timestamp AT TIME ZONE 'UTC';
        hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';"""


def upgrade() -> None:
    op.execute(_RETIRE)
    op.execute(_ENSURE.replace("{bound_type}", "text").replace("{bounds}", _UTC_LITERALS))


def downgrade() -> None:
    op.execute(_RETIRE_0019)
    op.execute(_ENSURE.replace("{bound_type}", "timestamptz").replace("{bounds}", _SESSION_SPELLED))
