-- API keys (migration 0008). The secret is never stored: key_hash is HMAC-SHA-256(pepper, secret).

-- name: insert_key(key_id, user_id, key_hash, is_admin, name, rate_per_s, daily_quota)^
INSERT INTO api_keys (key_id, user_id, key_hash, is_admin, name, rate_per_s, daily_quota)
VALUES (:key_id, :user_id, :key_hash, :is_admin, :name, :rate_per_s, :daily_quota)
RETURNING *;

-- name: get_key(key_id)^
-- Primary-key lookup on every request whose key is not in the Redis cache (about 0.1 ms).
SELECT k.* FROM api_keys k WHERE k.key_id = :key_id;

-- name: list_keys(user_id)
-- A NULL user_id lists every user's keys (operators); newest first.
SELECT k.* FROM api_keys k
WHERE :user_id::varchar IS NULL OR k.user_id = :user_id::varchar
ORDER BY k.created_at DESC, k.key_id;

-- name: revoke_key(key_id, user_id)^
-- Idempotent: revoking a revoked key keeps its first revocation time. A non-NULL user_id revokes
-- only that user's key, so a user's own call can never reach another user's key.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
WHERE key_id = :key_id AND (:user_id::varchar IS NULL OR user_id = :user_id::varchar)
RETURNING *;

-- name: touch_key(key_id)!
-- Called on a cache miss only (at most once a cache TTL per key), so a busy key costs no write per request.
UPDATE api_keys SET last_used_at = now() WHERE key_id = :key_id;

-- name: find_idempotent_job(user_id, idem_key)^
SELECT i.job_id, i.fingerprint, i.created_at FROM idempotency_keys i
WHERE i.user_id = :user_id AND i.idem_key = :idem_key;

-- name: claim_idempotency_key(user_id, idem_key, fingerprint, job_id)$
-- In the intake transaction with the job's insert: of two concurrent retries one inserts, the other
-- waits on the primary key, then sees the conflict (NULL) and returns the winner's job instead.
INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, job_id)
VALUES (:user_id, :idem_key, :fingerprint, :job_id)
ON CONFLICT (user_id, idem_key) DO NOTHING
RETURNING true;

-- name: prune_idempotency_keys(before)$
WITH gone AS (DELETE FROM idempotency_keys WHERE created_at < :before RETURNING 1)
SELECT count(*)::int FROM gone;
