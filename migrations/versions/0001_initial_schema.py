"""Initial schema: users, tags, partitioned jobs and image_tags, stats with a dedup ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Differences from the seed design (docs/storage.md), each for a measured weakness:
- image_process_jobs and image_tags are range-partitioned by month on created_at, so the 6-month
  retention is a DROP/DETACH of a partition instead of a DELETE (62 s per month and bloat as measured).
  The primary key therefore has to include the partition key: (job_id, created_at). created_at is the
  UUIDv7's own millisecond timestamp (shared.ids), so a lookup by id still names one partition.
- image_tags carries created_at too, to reference the composite key, to be partitioned the same way
  (a month is dropped from both tables together) and to serve tag lookups by time.
- processing_stats keeps sums, not averages, so increments commute: avg and error_rate are generated.
  stats_ledger makes every (day, job, kind) count once under at-least-once delivery.
- pgcrypto is not installed: nothing needs it and the embedded PostgreSQL 18 does not ship it.

Migrations are rendered to SQL and run by shared.db.migrate (see migrations/env.py): raw SQL only.
Note for authors: SQLAlchemy's text() reads a colon followed by a word as a bind parameter, so the
SQL below never has one (casts with '::' and PL/pgSQL ':=' are fine).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_EXTENSIONS = [
    # Trigram fuzzy search on tags.name (design query 5).
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
]

_USERS_AND_TAGS = [
    """
    CREATE TABLE users (
        user_id    varchar(64)  PRIMARY KEY,
        username   varchar(128) NOT NULL,
        email      varchar(256) UNIQUE,
        created_at timestamptz  NOT NULL DEFAULT now(),
        last_login timestamptz
    )
    """,
    """
    CREATE TABLE tags (
        tag_id serial      PRIMARY KEY,
        name   varchar(64) NOT NULL UNIQUE
    )
    """,
    "CREATE INDEX ix_tags_name_trgm ON tags USING gin (name gin_trgm_ops)",
]

_JOBS = [
    """
    CREATE TABLE image_process_jobs (
        job_id             uuid         NOT NULL,
        created_at         timestamptz  NOT NULL,
        user_id            varchar(64)  NOT NULL,
        original_path      varchar(512) NOT NULL,
        mask_path          varchar(512),
        processed_path     varchar(512),
        status             varchar(32)  NOT NULL DEFAULT 'pending',
        updated_at         timestamptz  NOT NULL DEFAULT now(),
        started_at         timestamptz,
        completed_at       timestamptz,
        processing_time_ms integer,
        image_width        integer,
        image_height       integer,
        file_size_kb       integer,
        params             jsonb        NOT NULL DEFAULT '{}',
        params_hash        varchar(16)  NOT NULL,
        error_message      text,
        content_sha256     bytea        NOT NULL,
        model_name         varchar(200) NOT NULL,
        model_revision     varchar(100),
        original_bytes     integer      NOT NULL,
        mask_bytes         integer,
        processed_bytes    integer,
        source             varchar(16)  NOT NULL,
        attempts           smallint     NOT NULL DEFAULT 1,
        reused_result      boolean      NOT NULL DEFAULT false,
        CONSTRAINT image_process_jobs_pkey PRIMARY KEY (job_id, created_at),
        CONSTRAINT ck_jobs_status
            CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
        CONSTRAINT ck_jobs_processing_time CHECK (processing_time_ms >= 0),
        CONSTRAINT ck_jobs_sha256 CHECK (octet_length(content_sha256) = 32),
        CONSTRAINT ck_jobs_source CHECK (source IN ('http', 'upload')),
        -- Beyond the brief: a negative size or a zero attempt count is always an upstream bug,
        -- cheaper to refuse at the write than to find in a report.
        CONSTRAINT ck_jobs_sizes CHECK (
            original_bytes >= 0 AND (mask_bytes IS NULL OR mask_bytes >= 0)
            AND (processed_bytes IS NULL OR processed_bytes >= 0)),
        CONSTRAINT ck_jobs_attempts CHECK (attempts >= 1),
        -- State consistency: a row's columns always agree with its status.
        CONSTRAINT ck_jobs_completed_fields CHECK (
            status <> 'completed' OR (completed_at IS NOT NULL AND mask_path IS NOT NULL
                                      AND processed_path IS NOT NULL AND processing_time_ms IS NOT NULL)),
        CONSTRAINT ck_jobs_failed_fields CHECK (
            status <> 'failed' OR (error_message IS NOT NULL AND completed_at IS NOT NULL)),
        CONSTRAINT ck_jobs_pending_open CHECK (status <> 'pending' OR completed_at IS NULL)
    ) PARTITION BY RANGE (created_at)
    """,
    # A job moves only forward (docs/life-of-a-job.md). The repository's UPDATEs are guarded by
    # status in their WHERE clause and so never reach this; the trigger catches everything else
    # (a bug, a manual UPDATE). A terminal row is immutable; an operator who must repair one sets
    # `SET LOCAL rmbg.allow_terminal_update = on` in the repairing transaction, which still cannot
    # change its status. The error is SQLSTATE 23000 with a constraint name, so clients can tell it
    # from other failures (asyncpg: IntegrityConstraintViolationError, .constraint_name).
    """
    CREATE FUNCTION rmbg_jobs_status_guard() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        IF NEW.status = OLD.status THEN
            IF OLD.status IN ('pending', 'processing')
               OR current_setting('rmbg.allow_terminal_update', true) = 'on' THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'job % is % (a terminal state) and may not be updated', OLD.job_id, OLD.status
                USING ERRCODE = 'integrity_constraint_violation',
                      CONSTRAINT = 'image_process_jobs_status_forward_only',
                      HINT = 'a terminal job is final; create a new job to process the image again';
        END IF;
        IF (OLD.status = 'pending' AND NEW.status IN ('processing', 'completed', 'failed'))
           OR (OLD.status = 'processing' AND NEW.status IN ('completed', 'failed')) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'job % may not move from status % to %', OLD.job_id, OLD.status, NEW.status
            USING ERRCODE = 'integrity_constraint_violation',
                  CONSTRAINT = 'image_process_jobs_status_forward_only',
                  HINT = 'allowed: pending to processing, completed or failed; '
                         'processing to completed or failed';
    END
    $fn$
    """,
    """
    CREATE TRIGGER trg_jobs_status_guard
        BEFORE UPDATE ON image_process_jobs
        FOR EACH ROW EXECUTE FUNCTION rmbg_jobs_status_guard()
    """,
    # Indexes are declared on the partitioned parent: every partition, present or future, gets them.
    #
    # The design's indexes, kept:
    "CREATE INDEX ix_jobs_created_at ON image_process_jobs (created_at)",
    "CREATE INDEX ix_jobs_completed_at ON image_process_jobs (completed_at) WHERE status = 'completed'",
    # (user_id, created_at) also replaces the design's separate user_id index: a B-tree serves
    # `user_id = $1` from its leading column just as well, and each index costs a write (and WAL:
    # the design measured 18-20 KB of WAL per row with eight indexes) on every non-HOT row version.
    "CREATE INDEX ix_jobs_user_created ON image_process_jobs (user_id, created_at)",
    # jsonb_path_ops rather than the default jsonb_ops: we only ever ask containment (@>), which it
    # supports; it hashes whole paths, so it is 2-3x smaller and a containment lookup touches fewer
    # entries. The design measured this index unused for a value matching 10% of rows (a scan wins);
    # smaller is what keeps it worth having for the selective values.
    "CREATE INDEX ix_jobs_params ON image_process_jobs USING gin (params jsonb_path_ops)",
    # The design's expression index for "large files", made partial: a boolean key over all rows is
    # one index write per row version for a value that is false for nearly all of them; indexing
    # only the large ones keeps `WHERE file_size_kb > 4096` (and `(file_size_kb > 4096) = true`)
    # served at a fraction of the cost.
    """
    CREATE INDEX ix_jobs_large_files ON image_process_jobs ((file_size_kb > 4096))
        WHERE file_size_kb > 4096
    """,
    #
    # Ours:
    # Query 1 (a user's latest completed) and its keyset continuation, read in index order.
    """
    CREATE INDEX ix_jobs_user_completed_keyset ON image_process_jobs (user_id, created_at DESC, job_id DESC)
        WHERE status = 'completed'
    """,
    # Query 3, keyset page over completed jobs with the (created_at, job_id) tie-breaker.
    """
    CREATE INDEX ix_jobs_completed_keyset ON image_process_jobs (created_at DESC, job_id DESC)
        WHERE status = 'completed'
    """,
    # Result reuse (same bytes, model and parameters) and retention's "is this object still used".
    """
    CREATE INDEX ix_jobs_result_reuse ON image_process_jobs (content_sha256, model_name, params_hash)
        WHERE status = 'completed'
    """,
    # The stuck-job sweeper. This also replaces the design's index on status: the selective values
    # (pending, processing) are all here, and 'completed', the bulk of the table, is never worth an
    # index scan on status alone (the partial indexes above carry it where it matters).
    """
    CREATE INDEX ix_jobs_active_updated ON image_process_jobs (updated_at)
        WHERE status IN ('pending', 'processing')
    """,
]

_IMAGE_TAGS = [
    """
    CREATE TABLE image_tags (
        job_id     uuid        NOT NULL,
        created_at timestamptz NOT NULL,
        tag_id     integer     NOT NULL REFERENCES tags (tag_id),
        CONSTRAINT image_tags_pkey PRIMARY KEY (job_id, created_at, tag_id),
        -- The design's FK had no ON DELETE rule, which made its 6-month DELETE fail.
        CONSTRAINT image_tags_job_fkey FOREIGN KEY (job_id, created_at)
            REFERENCES image_process_jobs (job_id, created_at) ON DELETE CASCADE
    ) PARTITION BY RANGE (created_at)
    """,
    "CREATE INDEX ix_image_tags_tag_created ON image_tags (tag_id, created_at DESC)",
]

_STATS = [
    """
    CREATE TABLE processing_stats (
        stat_date              date    PRIMARY KEY,
        total_jobs             integer NOT NULL DEFAULT 0,
        completed_jobs         integer NOT NULL DEFAULT 0,
        failed_jobs            integer NOT NULL DEFAULT 0,
        sum_processing_time_ms bigint  NOT NULL DEFAULT 0,
        avg_processing_time_ms numeric(10, 2) GENERATED ALWAYS AS (
            CASE WHEN completed_jobs > 0
                 THEN round(sum_processing_time_ms::numeric / completed_jobs, 2) END) STORED,
        error_rate numeric(5, 2) GENERATED ALWAYS AS (
            CASE WHEN completed_jobs + failed_jobs > 0
                 THEN round(100.0 * failed_jobs / (completed_jobs + failed_jobs), 2) END) STORED,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # One row per counted (day, job, kind): the increment in processing_stats happens only when this
    # insert does, in the same statement, so a redelivered event counts once. stat_date leads the key
    # so old days can be deleted by range along with the partitions they describe.
    """
    CREATE TABLE stats_ledger (
        stat_date date        NOT NULL,
        job_id    uuid        NOT NULL,
        kind      varchar(16) NOT NULL CHECK (kind IN ('accepted', 'completed', 'failed')),
        PRIMARY KEY (stat_date, job_id, kind)
    )
    """,
]

# Monthly partitions of both partitioned tables, named <table>_yYYYYmMM, bounded at UTC month starts.
# One implementation, in SQL, for this migration, for shared.db.partitions.ensure_partitions and for
# the insert path that meets a missing month. Concurrency: a transaction-scoped advisory lock
# (7270, 1) serialises callers, and each month is checked after the lock is taken, so two services
# creating the same month both succeed and only one creates it. Returns the names it created.
#
# No DEFAULT partition, on purpose: attaching or creating a range partition next to a DEFAULT one
# must scan (and lock) the default partition to prove no row belongs in the new range, and rows that
# land there sit outside the monthly scheme that retention drops. A missing month is instead a loud
# error (23514) that the insert path repairs by creating the month and retrying once.
_PARTITIONS = [
    """
    CREATE FUNCTION rmbg_ensure_partitions(p_start date, p_months integer) RETURNS SETOF text
    LANGUAGE plpgsql AS $fn$
    DECLARE
        first_month date := date_trunc('month', p_start::timestamp)::date;
        m           date;
        lo          timestamptz;
        hi          timestamptz;
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
            lo := m::timestamp AT TIME ZONE 'UTC';
            hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
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
    """,
    # From 6 months ago (the design's retention horizon) to 3 months ahead: 10 months.
    """
    SELECT count(*) FROM rmbg_ensure_partitions(
        (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '6 months')::date, 10)
    """,
]


def upgrade() -> None:
    for statement in [*_EXTENSIONS, *_USERS_AND_TAGS, *_JOBS, *_IMAGE_TAGS, *_STATS, *_PARTITIONS]:
        op.execute(statement)


def downgrade() -> None:
    for statement in [
        "DROP TABLE IF EXISTS stats_ledger",
        "DROP TABLE IF EXISTS processing_stats",
        "DROP TABLE IF EXISTS image_tags",
        "DROP TABLE IF EXISTS image_process_jobs",
        "DROP FUNCTION IF EXISTS rmbg_ensure_partitions(date, integer)",
        "DROP FUNCTION IF EXISTS rmbg_jobs_status_guard()",
        "DROP TABLE IF EXISTS tags",
        "DROP TABLE IF EXISTS users",
    ]:
        op.execute(statement)
