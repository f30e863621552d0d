-- name: ping()$
-- Readiness probe: a round trip that touches no table.
SELECT 1;
