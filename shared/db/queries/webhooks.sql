-- Webhooks (migration 0009): the outbox of job endings with callbacks, their attempts, users' secrets.
-- Rows move pending -> due (the trigger on image_process_jobs, never this file) -> delivered | gave_up.
-- Note for editors: aiosql reads a colon followed by a word as a parameter, comments included.

-- name: register_webhook(job_id, created_at, user_id, url)$
-- In intake's transaction, before or after the job's insert. The job row is read FOR SHARE: an ending
-- committed by another transaction is waited for and seen (the row is inserted due), and an ending
-- not yet written waits for this commit, so its trigger sees the row. Without the lock both could miss
-- each other and the row would stay pending forever. No job row yet: pending, and the insert's own
-- trigger makes it due if the job is inserted terminal. Returns the state, NULL if already registered.
WITH job AS (
    SELECT j.status FROM image_process_jobs j
    WHERE j.job_id = :job_id AND j.created_at = :created_at
    FOR SHARE
), ended AS (
    SELECT (SELECT status FROM job WHERE status IN ('completed', 'failed')) AS status
)
INSERT INTO webhooks (job_id, created_at, user_id, url, state, event_type, due_at, next_attempt_at)
SELECT :job_id::uuid, :created_at::timestamptz, :user_id::varchar, :url::varchar,
       CASE WHEN e.status IS NULL THEN 'pending' ELSE 'due' END,
       'job.' || e.status,
       CASE WHEN e.status IS NOT NULL THEN now() END,
       CASE WHEN e.status IS NOT NULL THEN now() END
FROM ended e
ON CONFLICT (job_id) DO NOTHING
RETURNING state;

-- name: get_webhook(job_id)^
SELECT w.* FROM webhooks w WHERE w.job_id = :job_id;

-- name: claim_due_webhooks(limit, lease_s, max_attempts, max_age_s)
-- Up to `limit` rows owed an attempt, each leased for `lease_s`: next_attempt_at moves past the lease,
-- so no other replica claims it meanwhile, and a holder that died frees it when the lease ends.
-- SKIP LOCKED: two replicas claiming at once take different rows instead of waiting on each other.
-- The attempt number is drawn here, so each claim owns one number (a crashed claim leaves a gap).
-- The bounds hold here, not only where an attempt is judged: a picked row whose numbers are all drawn
-- (`max_attempts`, the schedule's waits plus one) or that became due more than `max_age_s` ago is given
-- up with the reason instead of claimed. An attempt that is never recorded (its holder crashed, or failed
-- before it could record) otherwise came back every lease_s forever, one more number each time, until the
-- smallint attempts (migration 0009) overflowed at 32,767 and this one statement, picking that oldest
-- row first, failed with 22003 for everyone. LEAST keeps any configured cap inside the smallint.
-- Measured with 105k finished rows: 0.14-0.22 ms a call when nothing is due (ix_webhooks_due holds only
-- due rows), 0.7-1.0 ms to claim 16 of 1,000 due; polled every 0.5 s per replica. Measured before the
-- bounds, which add two comparisons per picked row and no scan.
WITH bounds AS (
    SELECT LEAST(:max_attempts::int, 32767) AS max_attempts,
           make_interval(secs => :max_age_s::double precision) AS max_age
), picked AS (
    SELECT w.job_id,
           w.attempts < b.max_attempts AS attempts_left,
           -- + lease_s: _judge schedules a last attempt up to max_age by the dispatcher's clock, and its
           -- claim comes a poll (or a backlog) later by the database's; that attempt must still run.
           now() <= COALESCE(w.due_at, w.registered_at) + b.max_age
                    + make_interval(secs => :lease_s::double precision) AS young
    FROM webhooks w CROSS JOIN bounds b
    WHERE w.state = 'due' AND w.next_attempt_at <= now()
    ORDER BY w.next_attempt_at
    LIMIT :limit
    FOR UPDATE OF w SKIP LOCKED
), spent AS (
    -- Runs whether or not it is read (a data-modifying WITH always does); its rows are not the claim's.
    UPDATE webhooks w
    SET state = 'gave_up', next_attempt_at = NULL, lease_token = NULL,
        last_error = CASE
            WHEN NOT picked.attempts_left
                THEN format('gave up: all %s attempts drawn, the last never recorded', w.attempts)
            ELSE format('gave up: no attempt starts later than %s s after the job ended', :max_age_s::double precision)
        END
    FROM picked
    WHERE w.job_id = picked.job_id AND NOT (picked.attempts_left AND picked.young)
    RETURNING w.job_id
)
UPDATE webhooks w
SET attempts = w.attempts + 1,
    next_attempt_at = now() + make_interval(secs => :lease_s::double precision),
    lease_token = gen_random_uuid()
FROM picked
WHERE w.job_id = picked.job_id AND picked.attempts_left AND picked.young
RETURNING w.*;

-- name: insert_attempt(job_id, attempt, at, status_code, latency_ms, error)!
-- Recorded even when the lease was lost meanwhile: the request was sent either way.
INSERT INTO webhook_attempts (job_id, attempt, at, status_code, latency_ms, error)
VALUES (:job_id, :attempt, :at, :status_code, :latency_ms, :error)
ON CONFLICT (job_id, attempt) DO NOTHING;

-- name: finish_attempt(job_id, lease_token, state, next_attempt_at, status_code, error, delivered_at)$
-- Only the lease holder moves the row on: a holder whose lease lapsed (and whose row another replica
-- claimed) changes nothing. Returns true when it applied.
UPDATE webhooks w
SET state = :state, next_attempt_at = :next_attempt_at, lease_token = NULL,
    last_status = :status_code, last_error = :error, delivered_at = :delivered_at
WHERE w.job_id = :job_id AND w.lease_token = :lease_token AND w.state = 'due'
RETURNING true;

-- name: webhook_for_user(job_id, user_id)^
-- The caller's own webhook only: another user's job answers nothing, like a missing one.
SELECT w.* FROM webhooks w WHERE w.job_id = :job_id AND w.user_id = :user_id;

-- name: attempts_of(job_id)
SELECT a.* FROM webhook_attempts a WHERE a.job_id = :job_id ORDER BY a.attempt;

-- name: prune_webhooks(before)$
-- With retention: the webhooks (and their attempts) of jobs created before the cutoff.
WITH gone AS (DELETE FROM webhooks WHERE created_at < :before RETURNING 1)
SELECT count(*)::int FROM gone;

-- name: get_webhook_secret(user_id)^
SELECT s.* FROM webhook_secrets s WHERE s.user_id = :user_id;

-- name: create_webhook_secret(user_id, secret_encrypted)^
-- Get-or-create in one statement pair: of two first calls one inserts, the other waits on the key and
-- then inserts nothing (NULL); the caller reads the winner's row.
INSERT INTO webhook_secrets (user_id, secret_encrypted)
VALUES (:user_id, :secret_encrypted)
ON CONFLICT (user_id) DO NOTHING
RETURNING *;

-- name: rotate_webhook_secret(user_id, secret_encrypted, previous_until)^
-- The current secret becomes the previous one, still signing until previous_until; any older one ends.
-- Creates the row when the user had none (then there is no previous secret).
INSERT INTO webhook_secrets AS s (user_id, secret_encrypted)
VALUES (:user_id, :secret_encrypted)
ON CONFLICT (user_id) DO UPDATE
SET previous_encrypted = s.secret_encrypted, previous_until = :previous_until,
    secret_encrypted = EXCLUDED.secret_encrypted, rotated_at = now()
RETURNING *;
