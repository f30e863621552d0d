-- name: ping()$
-- Readiness probe: a round trip that touches no table.
SELECT 1;

-- Database health for `rmbg doctor` (rmbg/maintenance/doctor.py judges the figures, these only read them).
-- Every statement reads statistics views or catalogs, never a user table, so doctor is cheap at any size
-- and safe to run on a loaded primary. The pg_stat_* views need pg_monitor (or superuser) to show other
-- sessions' queries and the archive status directory; deploy/postgres/monitor-role.sql grants it.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: health_connections()^
-- Client sessions against max_connections, less the slots reserved for superusers (what applications
-- can really open). Background workers are not counted: they do not take a connection slot.
SELECT
    count(*) FILTER (WHERE backend_type = 'client backend')::int AS total,
    count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'active')::int AS active,
    count(*) FILTER (WHERE backend_type = 'client backend' AND state LIKE 'idle in transaction%')::int
        AS idle_in_transaction,
    current_setting('max_connections')::int AS max_connections,
    current_setting('superuser_reserved_connections')::int AS reserved
FROM pg_stat_activity;

-- name: health_cache()^
-- Buffer cache hits over all block reads of this database since its statistics were last reset.
-- blks_read counts reads that missed shared_buffers (the OS page cache may still have served them).
SELECT blks_hit::bigint AS hit, blks_read::bigint AS read, stats_reset
FROM pg_stat_database
WHERE datname = current_database();

-- name: health_longest_query()^
-- The longest running statement of another client session (NULL columns when none is running).
-- clock_timestamp(), not now() (this transaction's start): a session that began a moment later gave a
-- negative age.
SELECT pid, usename::text AS username, state,
       greatest(extract(epoch FROM clock_timestamp() - query_start), 0)::float8 AS seconds,
       left(query, 200) AS query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()
ORDER BY query_start
LIMIT 1;

-- name: health_oldest_transaction()^
-- The oldest open transaction of another session in this database, idle in transaction included: it
-- holds back this database's xmin horizon, so VACUUM can remove no row version deleted after it began, in
-- any of its tables. Sessions in other databases hold back only the shared catalogs (PostgreSQL computes
-- the horizon of a table per database), so they are not counted.
SELECT pid, usename::text AS username, state,
       greatest(extract(epoch FROM clock_timestamp() - xact_start), 0)::float8 AS seconds,
       left(query, 200) AS query
FROM pg_stat_activity
WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND datname = current_database()
ORDER BY xact_start
LIMIT 1;

-- name: health_dead_tuples(min_dead)
-- Tables (partitions included) by dead row versions, the estimate autovacuum itself acts on; only those
-- with at least min_dead, worst ratio first.
SELECT schemaname::text || '.' || relname::text AS relation,
       n_live_tup::bigint AS live, n_dead_tup::bigint AS dead,
       greatest(last_autovacuum, last_vacuum) AS last_vacuum,
       pg_total_relation_size(relid)::bigint AS total_bytes
FROM pg_stat_user_tables
WHERE n_dead_tup >= :min_dead::bigint
ORDER BY n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1) DESC, n_dead_tup DESC
LIMIT 20;

-- name: health_has_pgstattuple()$
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple');

-- name: health_largest_btree_indexes(max_indexes)
-- The largest B-tree indexes, whose leaf density pgstatindex measures (it reads the whole index, so
-- doctor measures only these, and only with --deep).
SELECT i.indexrelid::regclass::text AS index_name, pg_relation_size(i.indexrelid)::bigint AS bytes
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE am.amname = 'btree' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND c.relkind = 'i'
ORDER BY pg_relation_size(i.indexrelid) DESC
LIMIT :max_indexes::int;

-- name: health_index_density(index_name)^
-- pgstattuple's measure of one B-tree: the fill of its leaf pages (a fresh index is at ~90%).
SELECT avg_leaf_density::float8 AS leaf_density, leaf_pages::bigint AS leaf_pages,
       index_size::bigint AS bytes
FROM pgstatindex(:index_name::text);

-- name: health_table_bloat(relation)^
-- pgstattuple_approx (visibility-map assisted, reads only pages not all-visible) of one table.
SELECT approx_free_percent::float8 AS free_percent, dead_tuple_percent::float8 AS dead_percent,
       table_len::bigint AS bytes
FROM pgstattuple_approx(:relation::text::regclass);

-- name: health_archiver()^
-- WAL archiving: archive_mode, and pg_stat_archiver's counts and times.
SELECT current_setting('archive_mode') AS archive_mode,
       current_setting('archive_command') AS archive_command,
       current_setting('archive_timeout') AS archive_timeout,
       archived_count::bigint AS archived_count, last_archived_wal, last_archived_time,
       failed_count::bigint AS failed_count, last_failed_wal, last_failed_time, stats_reset
FROM pg_stat_archiver;

-- name: health_archive_ready()$
-- WAL segments waiting for archive_command (their .ready files). They cannot be recycled, so a backlog
-- grows pg_wal until the disk fills. pg_ls_archive_statusdir needs pg_monitor or superuser.
SELECT count(*)::int FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready';

-- name: health_replication()
-- Each standby streaming from this server, with its lag as the standby reports it.
SELECT application_name::text AS name, client_addr::text AS client_addr, state, sync_state,
       extract(epoch FROM replay_lag)::float8 AS replay_lag_s,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes
FROM pg_stat_replication
ORDER BY application_name;

-- name: health_slots()
-- Replication slots and the WAL each keeps from being recycled (an inactive slot keeps it forever).
SELECT slot_name::text AS name, slot_type AS kind, active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots
ORDER BY slot_name;

-- name: health_in_recovery()$
SELECT pg_is_in_recovery();

-- name: health_durability()
-- The settings an acknowledged job's survival depends on (docs/storage.md, "Writes"), as this session
-- sees them (a per-database or per-role ALTER ... SET shows here too).
SELECT name, setting, source
FROM pg_settings
WHERE name IN ('synchronous_commit', 'fsync', 'full_page_writes')
ORDER BY name;
