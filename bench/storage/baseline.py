"""The seed design (docs/storage.md) exactly as listed: the benchmark's baseline.

UUIDv4 keys, no partitioning, the design's eight indexes on image_process_jobs (primary key, status,
user_id, created_at, the partial completed_at, (user_id, created_at), GIN(params) with the default
jsonb_ops, the (file_size_kb > 4096) expression), the trigram GIN on tags.name, and processing_stats
that nothing keeps current. Index names are ours (the design names none).
"""

from __future__ import annotations

# Extensions the design lists under "Components".
EXTENSIONS = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE EXTENSION IF NOT EXISTS pgcrypto",
)

TABLES = (
    """
    CREATE TABLE image_process_jobs (
        job_id UUID PRIMARY KEY,
        user_id VARCHAR(64) NOT NULL,
        original_path VARCHAR(512) NOT NULL,
        mask_path VARCHAR(512),
        processed_path VARCHAR(512),
        status VARCHAR(32) NOT NULL CHECK (status IN ('pending','processing','completed','failed')),
        created_at TIMESTAMPTZ DEFAULT now(),
        completed_at TIMESTAMPTZ,
        processing_time_ms INTEGER,
        image_width INTEGER,
        image_height INTEGER,
        file_size_kb INTEGER,
        params JSONB,
        error_message TEXT
    )
    """,
    """
    CREATE TABLE users (
        user_id VARCHAR(64) PRIMARY KEY,
        username VARCHAR(128) NOT NULL,
        email VARCHAR(256) UNIQUE,
        created_at TIMESTAMPTZ DEFAULT now(),
        last_login TIMESTAMPTZ
    )
    """,
    "CREATE TABLE tags (tag_id SERIAL PRIMARY KEY, name VARCHAR(64) UNIQUE NOT NULL)",
    """
    CREATE TABLE image_tags (
        job_id UUID REFERENCES image_process_jobs,
        tag_id INTEGER REFERENCES tags,
        PRIMARY KEY (job_id, tag_id)
    )
    """,
    """
    CREATE TABLE processing_stats (
        stat_date DATE PRIMARY KEY,
        total_jobs INTEGER DEFAULT 0,
        completed_jobs INTEGER DEFAULT 0,
        avg_processing_time_ms NUMERIC(10,2),
        error_rate NUMERIC(5,2)
    )
    """,
)

INDEXES = (
    "CREATE INDEX idx_jobs_status ON image_process_jobs (status)",
    "CREATE INDEX idx_jobs_user_id ON image_process_jobs (user_id)",
    "CREATE INDEX idx_jobs_created_at ON image_process_jobs (created_at)",
    "CREATE INDEX idx_jobs_completed_at ON image_process_jobs (completed_at) WHERE status = 'completed'",
    "CREATE INDEX idx_jobs_user_created ON image_process_jobs (user_id, created_at)",
    "CREATE INDEX idx_jobs_params ON image_process_jobs USING gin (params)",
    "CREATE INDEX idx_jobs_large_files ON image_process_jobs ((file_size_kb > 4096))",
    "CREATE INDEX idx_tags_name_trgm ON tags USING gin (name gin_trgm_ops)",
)

DDL = (*EXTENSIONS, *TABLES, *INDEXES)

# The design's queries ("Queries that must be fast"), as the design states them, with $n parameters.
RECENT_COMPLETED = """
SELECT * FROM image_process_jobs
WHERE user_id = $1 AND status = 'completed'
ORDER BY created_at DESC
LIMIT 10
"""

# Daily totals by GROUP BY over the jobs (processing_stats is never written in the design).
DAILY_TOTALS = """
SELECT DATE(created_at) AS day, COUNT(*) AS total_jobs, AVG(processing_time_ms) AS avg_processing_time_ms
FROM image_process_jobs
WHERE created_at >= $1 AND created_at < $2
GROUP BY DATE(created_at)
ORDER BY day
"""

KEYSET_PAGE = """
SELECT * FROM image_process_jobs
WHERE created_at < $1 AND status = 'completed'
ORDER BY created_at DESC
LIMIT 20
"""

PARAMS_CONTAINMENT = """
SELECT * FROM image_process_jobs
WHERE params @> $1
LIMIT 20
"""

PARAMS_COUNT = "SELECT COUNT(*) FROM image_process_jobs WHERE params @> $1"

# `name % q`; most similar first and ten of them, the same answer as our search_tags.
FUZZY_TAGS = """
SELECT tag_id, name, similarity(name, $1) AS similarity
FROM tags
WHERE name % $1
ORDER BY similarity DESC
LIMIT 10
"""

USER_QUARTILES = """
SELECT user_id, COUNT(*) AS job_count, NTILE(4) OVER (ORDER BY COUNT(*)) AS quartile
FROM image_process_jobs
GROUP BY user_id
"""

USER_QUARTILES_SINCE = """
SELECT user_id, COUNT(*) AS job_count, NTILE(4) OVER (ORDER BY COUNT(*)) AS quartile
FROM image_process_jobs
WHERE created_at >= $1
GROUP BY user_id
"""

# Maintenance: "delete completed jobs older than 6 months". The DELETE of the jobs alone fails with a
# foreign-key violation (image_tags has no ON DELETE rule), so the tags go first, as measured.
RETENTION_TAGS = """
DELETE FROM image_tags
WHERE job_id IN (SELECT job_id FROM image_process_jobs WHERE status = 'completed' AND created_at < $1)
"""
RETENTION_JOBS = "DELETE FROM image_process_jobs WHERE status = 'completed' AND created_at < $1"
