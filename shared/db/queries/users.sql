-- Users. Jobs create their user on first sight (jobs.sql insert_job); these serve profile writes.
-- Emails arrive encrypted (shared/auth/crypto.py): the database never sees one in plaintext.

-- name: upsert_user(user_id, username, email_encrypted, email_digest)^
-- A NULL username or email keeps the stored one; a new user without a name is named by its id.
INSERT INTO users AS u (user_id, username, email_encrypted, email_digest)
VALUES (:user_id::varchar, COALESCE(:username::varchar, :user_id::varchar), :email_encrypted::bytea,
        :email_digest::bytea)
ON CONFLICT (user_id) DO UPDATE SET
    username = COALESCE(:username::varchar, u.username),
    email_encrypted = COALESCE(:email_encrypted::bytea, u.email_encrypted),
    email_digest = COALESCE(:email_digest::bytea, u.email_digest)
RETURNING u.*;

-- name: get_user(user_id)^
SELECT u.* FROM users u WHERE u.user_id = :user_id;

-- name: find_user_by_email(email_digests)^
-- By the email's digests under every encryption key (shared/auth/crypto.py EmailCipher.digests): a row
-- written before a key rotation holds the digest under its key. One probe of the unique index per key.
SELECT u.* FROM users u WHERE u.email_digest = ANY(:email_digests::bytea[]) LIMIT 1;

-- name: touch_login(user_id, at)$
UPDATE users SET last_login = COALESCE(:at::timestamptz, now()) WHERE user_id = :user_id
RETURNING true;
