"""Table and index sizes (partitions summed into their parent), and a description of the loaded data."""

from __future__ import annotations

from typing import Any

import asyncpg

# A relation's storage: the leaves of its partition tree, or itself when it is not partitioned
# (pg_partition_tree returns no rows for a plain table or index).
LEAVES = "(SELECT relid FROM pg_partition_tree({oid}) WHERE isleaf UNION SELECT {oid} WHERE {plain})"

TABLES = f"""
SELECT c.relname AS name, c.relkind = 'p' AS partitioned,
       (SELECT count(*) FROM pg_partition_tree(c.oid) WHERE isleaf) AS partitions,
       (SELECT COALESCE(sum(pg_table_size(relid)), 0) FROM {LEAVES.format(oid="c.oid", plain="c.relkind = 'r'")} l
       )::bigint AS heap_bytes,
       (SELECT COALESCE(sum(pg_indexes_size(relid)), 0) FROM {LEAVES.format(oid="c.oid", plain="c.relkind = 'r'")} l
       )::bigint AS index_bytes,
       (SELECT COALESCE(sum(GREATEST(k.reltuples, 0)), 0)
        FROM {LEAVES.format(oid="c.oid", plain="c.relkind = 'r'")} l JOIN pg_class k ON k.oid = l.relid
       )::bigint AS est_rows
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname NOT LIKE 'bench\\_%' AND c.relname <> 'alembic_version'
"""

INDEXES = f"""
SELECT t.relname AS table_name, i.relname AS name,
       (SELECT COALESCE(sum(pg_relation_size(relid)), 0) FROM {LEAVES.format(oid="i.oid", plain="i.relkind = 'i'")} l
       )::bigint AS bytes,
       regexp_replace(pg_get_indexdef(i.oid), '^.* USING ', 'USING ') AS def
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public' AND NOT t.relispartition AND NOT i.relispartition
  AND t.relname NOT LIKE 'bench\\_%' AND t.relname <> 'alembic_version'
ORDER BY t.relname, bytes DESC
"""


async def sizes(conn: asyncpg.Connection) -> dict[str, Any]:
    tables = sorted((dict(r) for r in await conn.fetch(TABLES)),
                    key=lambda t: -(t["heap_bytes"] + t["index_bytes"]))
    indexes = [dict(r) for r in await conn.fetch(INDEXES)]
    return {"tables": tables, "indexes": indexes}


async def describe(conn: asyncpg.Connection) -> dict[str, Any]:
    """Row counts and the shape of the data, read from our database (the same data as the baseline's)."""
    out: dict[str, Any] = {}
    out["jobs"] = await conn.fetchval("SELECT count(*) FROM image_process_jobs")
    out["image_tags"] = await conn.fetchval("SELECT count(*) FROM image_tags")
    out["users"] = await conn.fetchval("SELECT count(*) FROM users")
    out["tags"] = await conn.fetchval("SELECT count(*) FROM tags")
    out["stats_ledger"] = await conn.fetchval("SELECT count(*) FROM stats_ledger")
    out["processing_stats"] = await conn.fetchval("SELECT count(*) FROM processing_stats")
    out["status"] = {r[0]: r[1] for r in await conn.fetch(
        "SELECT status, count(*) FROM image_process_jobs GROUP BY 1 ORDER BY 2 DESC")}
    row = await conn.fetchrow(
        """
        WITH c AS (SELECT user_id, count(*) AS n FROM image_process_jobs GROUP BY user_id)
        SELECT count(*) AS active_users, max(n) AS top_user_jobs,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median_jobs,
               percentile_disc(0.99) WITHIN GROUP (ORDER BY n) AS p99_jobs,
               (SELECT sum(n) FROM (SELECT n FROM c ORDER BY n DESC LIMIT 500) t)::float / sum(n) AS top500_share
        FROM c
        """
    )
    assert row is not None
    out["users_shape"] = dict(row)
    out["span"] = dict(await conn.fetchrow(
        "SELECT min(created_at) AS first, max(created_at) AS last FROM image_process_jobs"))
    out["threshold_09"] = await conn.fetchval(
        "SELECT count(*) FROM image_process_jobs WHERE params @> '{\"threshold\": 0.9}'")
    out["large_files"] = await conn.fetchval("SELECT count(*) FROM image_process_jobs WHERE file_size_kb > 4096")
    out["reused"] = await conn.fetchval("SELECT count(*) FROM image_process_jobs WHERE reused_result")
    out["distinct_content"] = await conn.fetchval(
        "SELECT count(DISTINCT content_sha256) FROM image_process_jobs")
    out["product_tags"] = await conn.fetchval("SELECT count(*) FROM tags WHERE name % 'product'")
    out["per_month"] = {str(r[0]): r[1] for r in await conn.fetch(
        "SELECT to_char(date_trunc('month', created_at AT TIME ZONE 'UTC'), 'YYYY-MM'), count(*) "
        "FROM image_process_jobs GROUP BY 1 ORDER BY 1")}
    out["avg_row_bytes"] = await conn.fetchval(
        "SELECT avg(pg_column_size(j.*))::int FROM image_process_jobs j TABLESAMPLE SYSTEM (1)")
    return out


async def settings(conn: asyncpg.Connection) -> dict[str, str]:
    names = ["server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size",
             "max_parallel_workers_per_gather", "random_page_cost", "jit", "synchronous_commit", "autovacuum"]
    rows = await conn.fetch("SELECT name, current_setting(name) AS v FROM unnest($1::text[]) AS name", names)
    return {r["name"]: r["v"] for r in rows}
