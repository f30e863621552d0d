-- Monthly partitions. The work is done by the SQL function rmbg_ensure_partitions (migration 0001),
-- so the migration, the maintenance loop and the insert path share one implementation and one lock.

-- name: ensure_partitions(start, months)
SELECT p AS name FROM rmbg_ensure_partitions(:start::date, :months::int) AS p;

-- name: list_partitions(parent)
-- The monthly partitions of one partitioned table, oldest first, with their bounds.
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(:parent::text)
ORDER BY c.relname;

-- name: partition_exists(relation)$
SELECT to_regclass(:relation::text) IS NOT NULL;
