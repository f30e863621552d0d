-- Users. Jobs create their user on first sight (jobs.sql insert_job); these serve profile writes.

-- name: upsert_user(user_id, username, email)^
-- A NULL username or email keeps the stored one; a new user without a name is named by its id.
INSERT INTO users AS u (user_id, username, email)
VALUES (:user_id::varchar, COALESCE(:username::varchar, :user_id::varchar), :email::varchar)
ON CONFLICT (user_id) DO UPDATE SET
    username = COALESCE(:username::varchar, u.username),
    email = COALESCE(:email::varchar, u.email)
RETURNING u.*;

-- name: get_user(user_id)^
SELECT u.* FROM users u WHERE u.user_id = :user_id;

-- name: touch_login(user_id, at)$
UPDATE users SET last_login = COALESCE(:at::timestamptz, now()) WHERE user_id = :user_id
RETURNING true;
