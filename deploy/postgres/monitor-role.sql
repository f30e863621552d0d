-- The monitoring role postgres_exporter and `rmbg doctor` connect as (deploy/k8s/base/postgres-exporter.yaml).
-- pg_monitor reads every pg_stat_* view (other sessions' queries included), pg_ls_archive_statusdir and the
-- pgstattuple functions; it can change nothing. Run once as a superuser, with your own password:
--   psql -v password="'...'" -f deploy/postgres/monitor-role.sql rmbg
CREATE ROLE rmbg_monitor LOGIN PASSWORD :password CONNECTION LIMIT 3;
GRANT pg_monitor TO rmbg_monitor;
-- pgstattuple (rmbg doctor --deep) is in PostgreSQL contrib; pg_stat_scan_tables (part of pg_monitor) may run it.
CREATE EXTENSION IF NOT EXISTS pgstattuple;
