"""API keys, encrypted emails and idempotency keys (issue 7: users reach their results, and only theirs).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

- api_keys: one row per key. Only a keyed hash of the secret is stored (HMAC-SHA-256 with a server-side
  pepper, docs/access.md says why not argon2): a stolen table cannot be replayed, and verifying costs
  microseconds instead of argon2's ~50 ms per request. revoked_at is set, never deleted, so an audit can
  tell a revoked key from one that never existed.
- users.email becomes email_encrypted (Fernet, in the application: the embedded PostgreSQL has no
  pgcrypto, and the key then never reaches the database or its logs) plus email_digest, a keyed hash
  that keeps emails unique without decrypting them. The migration refuses to drop plaintext emails.
- idempotency_keys: the first job a client's Idempotency-Key produced, with a fingerprint of the request,
  so a retried POST returns that job and a different request under the same key is refused. Rows older
  than a day are pruned by retention (clients retry within minutes; Stripe keeps them 24 h too).
- user_tags: which tags each user has used, so a user's tag search (`GET /v1/tags`) ranks only their own
  tags and never shows another user's tag names. Filled by intake with the job's tags (jobs.sql
  link_tags); backfilled here from the jobs. It outlives retention on purpose: a user's vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            key_id       varchar(16)  PRIMARY KEY,
            user_id      varchar(64)  NOT NULL REFERENCES users (user_id),
            key_hash     bytea        NOT NULL CHECK (length(key_hash) = 32),
            is_admin     boolean      NOT NULL DEFAULT false,
            name         varchar(64),
            -- Per-key limits (NULL: the service defaults, services/ingest/settings.py).
            rate_per_s   real         CHECK (rate_per_s > 0),
            daily_quota  integer      CHECK (daily_quota >= 0),
            created_at   timestamptz  NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            revoked_at   timestamptz
        )
        """
    )
    op.execute("CREATE INDEX api_keys_user ON api_keys (user_id, created_at)")
    op.execute(
        """
        ALTER TABLE users
            ADD COLUMN email_encrypted bytea,
            ADD COLUMN email_digest bytea UNIQUE CHECK (length(email_digest) = 32)
        """
    )
    # The plaintext column is dropped only when no row holds an email: encrypting needs the application's
    # key, which SQL rendered offline (migrations/env.py) cannot hold. No release ever wrote emails through
    # the application, so this only guards a hand-filled table (docs/access.md).
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM users WHERE email IS NOT NULL) THEN
                RAISE EXCEPTION 'users.email holds plaintext emails; revision 0008 stores them encrypted '
                    'by the application: clear or export them first (docs/access.md)';
            END IF;
        END $$
        """
    )
    op.execute("ALTER TABLE users DROP COLUMN email")
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            user_id     varchar(64)  NOT NULL,
            idem_key    varchar(255) NOT NULL,
            fingerprint bytea        NOT NULL,
            job_id      uuid         NOT NULL,
            created_at  timestamptz  NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, idem_key)
        )
        """
    )
    op.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)")
    op.execute(
        """
        CREATE TABLE user_tags (
            user_id varchar(64) NOT NULL REFERENCES users (user_id),
            tag_id  integer     NOT NULL REFERENCES tags (tag_id),
            PRIMARY KEY (user_id, tag_id)
        )
        """
    )
    # Jobs create their user on first sight (jobs.sql insert_job), but nothing in the schema holds a job's
    # user to exist (a hand-filled or bulk-loaded table): create those users first, as intake would have,
    # so the backfill below cannot fail on user_tags' foreign key.
    op.execute(
        """
        INSERT INTO users (user_id, username)
        SELECT DISTINCT j.user_id, j.user_id FROM image_process_jobs j
        JOIN image_tags it ON it.job_id = j.job_id AND it.created_at = j.created_at
        ON CONFLICT (user_id) DO NOTHING
        """
    )
    op.execute(
        """
        INSERT INTO user_tags (user_id, tag_id)
        SELECT DISTINCT j.user_id, it.tag_id
        FROM image_tags it
        JOIN image_process_jobs j ON j.job_id = it.job_id AND j.created_at = it.created_at
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS user_tags")
    op.execute("DROP TABLE IF EXISTS idempotency_keys")
    op.execute("ALTER TABLE users ADD COLUMN email varchar(256) UNIQUE")
    op.execute("ALTER TABLE users DROP COLUMN email_digest, DROP COLUMN email_encrypted")
    op.execute("DROP TABLE IF EXISTS api_keys")
