"""Webhooks: a signed POST when a job ends, from an outbox the database itself fills (issue 7 part 4).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

- webhooks: one row per job that has a callback URL, the outbox. Registered in intake's transaction as
  ``pending`` (``due`` at once when the job is already terminal: a rejected upload is inserted failed).
  Keyed by job_id alone: job ids are UUIDv7 and unique; created_at (the job's own) is kept to join the
  job in one partition and to prune with retention. No foreign key to image_process_jobs: retention
  detaches whole partitions, which a referencing table would block.
- A row trigger on image_process_jobs (on the partitioned parent, so every partition, present or future,
  has it) moves the job's row from pending to due when the job becomes completed or failed. Whoever
  writes the ending (the persister's handler, the sweeper, intake's reject, an operator's UPDATE)
  cannot forget the webhook, and ``WHERE state = 'pending'`` makes it due once: the status guard of
  0001 lets a job end once, and a repeat finds the row no longer pending. The cost is one primary-key
  probe of this table per ending: not measurable beside the statement itself (5,000 mark_failed in one
  transaction: 1.06 ms each with the trigger disabled, 0.91 ms enabled without a webhook, 1.00 ms with
  one; the spread is noise).
- Delivery (services/persister/webhooks.py) claims due rows with FOR UPDATE SKIP LOCKED and pushes
  next_attempt_at past a lease, so two persister replicas never send the same attempt at once and a
  crashed one's claim lapses; lease_token makes the holder the only one who may schedule the next step.
- webhook_attempts: every attempt, with its status code (NULL: no HTTP answer), latency and error, for
  ``GET /v1/jobs/{id}/webhooks``. Deleted with its webhook.
- webhook_secrets: each user's Standard Webhooks signing secret (``whsec_`` + base64 of 32 bytes),
  Fernet-encrypted by the application as emails are (0008; the database only holds ciphertext). After a
  rotation the previous secret still signs beside the new one until previous_until, so a receiver can
  switch without losing deliveries (the webhook-signature header carries both signatures).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UP = [
    """
    CREATE TABLE webhooks (
        job_id          uuid          PRIMARY KEY,
        created_at      timestamptz   NOT NULL,
        user_id         varchar(64)   NOT NULL,
        url             varchar(2048) NOT NULL,
        state           varchar(16)   NOT NULL DEFAULT 'pending',
        event_type      varchar(32),
        registered_at   timestamptz   NOT NULL DEFAULT now(),
        due_at          timestamptz,
        next_attempt_at timestamptz,
        lease_token     uuid,
        attempts        smallint      NOT NULL DEFAULT 0,
        last_status     smallint,
        last_error      text,
        delivered_at    timestamptz,
        CONSTRAINT ck_webhooks_state CHECK (state IN ('pending', 'due', 'delivered', 'gave_up')),
        CONSTRAINT ck_webhooks_event CHECK (event_type IN ('job.completed', 'job.failed')),
        -- Every row past pending knows its event and when it became due; a due row when to try next.
        CONSTRAINT ck_webhooks_due_fields CHECK (
            state = 'pending' OR (event_type IS NOT NULL AND due_at IS NOT NULL)),
        CONSTRAINT ck_webhooks_next CHECK (state <> 'due' OR next_attempt_at IS NOT NULL),
        CONSTRAINT ck_webhooks_delivered CHECK (state <> 'delivered' OR delivered_at IS NOT NULL)
    )
    """,
    # The dispatcher's poll (every 0.5 s): only due rows, in the order they are owed; stays tiny.
    "CREATE INDEX ix_webhooks_due ON webhooks (next_attempt_at) WHERE state = 'due'",
    # Retention prunes by the job's month.
    "CREATE INDEX ix_webhooks_created ON webhooks (created_at)",
    """
    CREATE TABLE webhook_attempts (
        job_id      uuid        NOT NULL REFERENCES webhooks (job_id) ON DELETE CASCADE,
        attempt     smallint    NOT NULL CHECK (attempt >= 1),
        at          timestamptz NOT NULL,
        status_code smallint,
        latency_ms  integer     NOT NULL CHECK (latency_ms >= 0),
        error       text,
        PRIMARY KEY (job_id, attempt)
    )
    """,
    """
    CREATE TABLE webhook_secrets (
        user_id            varchar(64) PRIMARY KEY REFERENCES users (user_id),
        secret_encrypted   bytea       NOT NULL,
        previous_encrypted bytea,
        previous_until     timestamptz,
        created_at         timestamptz NOT NULL DEFAULT now(),
        rotated_at         timestamptz
    )
    """,
    """
    CREATE FUNCTION rmbg_webhooks_job_ended() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        UPDATE webhooks w
        SET state = 'due', event_type = 'job.' || NEW.status, due_at = now(), next_attempt_at = now()
        WHERE w.job_id = NEW.job_id AND w.state = 'pending';
        RETURN NULL;
    END
    $fn$
    """,
    # INSERT too: intake inserts a rejected upload's job as failed directly. UPDATE OF status: other
    # updates (queue position, attempts) never pay for the trigger.
    """
    CREATE TRIGGER trg_jobs_webhook_due
        AFTER INSERT OR UPDATE OF status ON image_process_jobs
        FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed'))
        EXECUTE FUNCTION rmbg_webhooks_job_ended()
    """,
]


def upgrade() -> None:
    for statement in _UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in [
        "DROP TRIGGER IF EXISTS trg_jobs_webhook_due ON image_process_jobs",
        "DROP FUNCTION IF EXISTS rmbg_webhooks_job_ended()",
        "DROP TABLE IF EXISTS webhook_secrets",
        "DROP TABLE IF EXISTS webhook_attempts",
        "DROP TABLE IF EXISTS webhooks",
    ]:
        op.execute(statement)
