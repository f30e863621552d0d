"""UsersRepository, TagsRepository and the query loader."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest
from cryptography.fernet import Fernet

from shared.auth import EmailCipher
from shared.db import Queries, default_queries, load_queries
from shared.db.repositories import Repositories, create_repositories
from shared.exceptions import ConfigError
from tests.shared.db.conftest import unique_user
from tests.shared.db.test_jobs import job_args


async def test_user_upsert_keeps_what_is_not_given(conn: asyncpg.Connection, repos: Repositories) -> None:
    user_id = unique_user()
    cipher = EmailCipher(Fernet.generate_key().decode())
    email = f"{user_id}@example.com"
    encrypted, digest = cipher.encrypt(email), cipher.digest(email)
    created = await repos.users.upsert(conn, user_id=user_id)
    assert created.username == user_id and created.email_encrypted is None and created.last_login is None
    named = await repos.users.upsert(
        conn, user_id=user_id, username="Ada", email_encrypted=encrypted, email_digest=digest
    )
    assert named.username == "Ada" and named.email_encrypted is not None
    assert cipher.decrypt(named.email_encrypted) == email
    again = await repos.users.upsert(conn, user_id=user_id)
    assert (again.username, again.email_encrypted, again.created_at) == ("Ada", encrypted, created.created_at)

    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert await repos.users.touch_login(conn, user_id=user_id, at=at) is True
    got = await repos.users.get(conn, user_id=user_id)
    assert got is not None and got.last_login == at
    assert await repos.users.touch_login(conn, user_id="nobody-" + user_id) is False
    assert await repos.users.get(conn, user_id="nobody-" + user_id) is None


async def test_user_email_is_stored_encrypted_and_unique(conn: asyncpg.Connection, repos: Repositories) -> None:
    user_id = unique_user()
    cipher = EmailCipher(Fernet.generate_key().decode())
    email = f"Ada.{user_id}@Example.com "
    await repos.users.upsert(
        conn, user_id=user_id, email_encrypted=cipher.encrypt(email), email_digest=cipher.digest(email)
    )

    # The database holds ciphertext and a 32-byte keyed digest, never the address.
    row = await conn.fetchrow("SELECT email_encrypted, email_digest FROM users WHERE user_id = $1", user_id)
    assert row is not None
    stored, digest = bytes(row["email_encrypted"]), bytes(row["email_digest"])
    assert user_id.encode() not in stored and b"example.com" not in stored.lower()
    assert digest == cipher.digest(email) and len(digest) == 32
    assert cipher.decrypt(stored) == f"ada.{user_id}@example.com"  # normalised: trimmed, lower case
    # Encryption is randomised (Fernet's IV); the digest is not, so it finds the user.
    assert cipher.encrypt(email) != stored
    found = await repos.users.find_by_email(conn, email_digests=cipher.digests(email.strip().upper()))
    assert found is not None and found.user_id == user_id
    assert await repos.users.find_by_email(conn, email_digests=cipher.digests("someone@else.example")) is None

    # A second user with the same email (same digest, other ciphertext) is refused.
    other = unique_user()
    with pytest.raises(asyncpg.UniqueViolationError):
        await repos.users.upsert(
            conn, user_id=other, email_encrypted=cipher.encrypt(email), email_digest=cipher.digest(email)
        )
    assert await repos.users.get(conn, user_id=other) is None

    # Another key cannot read it.
    with pytest.raises(ConfigError):
        EmailCipher(Fernet.generate_key().decode()).decrypt(stored)


async def test_tags_of_a_job_become_its_users_tags(clean_conn: asyncpg.Connection, repos: Repositories) -> None:
    user, other = unique_user(), unique_user()
    for who, tags in ((user, ["shoes", "boots"]), (other, ["shoe", "shoestring"])):
        assert await repos.jobs.insert_job(clean_conn, **job_args(who, tags=tags)) is True
    mine = [m.name for m in await repos.tags.search(clean_conn, query="shoe", limit=10, user_id=user)]
    assert mine == ["shoes"]  # the other user's closer tags are not shown
    theirs = [m.name for m in await repos.tags.search(clean_conn, query="shoe", limit=10, user_id=other)]
    assert theirs[0] == "shoe" and set(theirs) <= {"shoe", "shoestring"}
    everyone = {m.name for m in await repos.tags.search(clean_conn, query="shoe", limit=10)}
    assert {"shoe", "shoes"} <= everyone
    linked = await clean_conn.fetch(
        "SELECT t.name FROM user_tags ut JOIN tags t USING (tag_id) WHERE ut.user_id = $1 ORDER BY t.name", user
    )
    assert [r["name"] for r in linked] == ["boots", "shoes"]


async def test_tags_ensure_and_search(clean_conn: asyncpg.Connection, repos: Repositories) -> None:
    ids = await repos.tags.ensure(clean_conn, names=["Shoes", "shoe", "boots", " shoes "])
    assert set(ids) == {"shoes", "shoe", "boots"}
    assert await repos.tags.ensure(clean_conn, names=["shoes"]) == {"shoes": ids["shoes"]}
    # No serial values burnt for names that exist (ON CONFLICT alone would draw one per row).
    assert await clean_conn.fetchval("SELECT max(tag_id) FROM tags") == max(ids.values())
    found = [m.name for m in await repos.tags.search(clean_conn, query="SHOE", limit=5)]
    assert found[0] == "shoe" and "shoes" in found and "boots" not in found
    with pytest.raises(ValueError):
        await repos.tags.search(clean_conn, query="x", limit=0)


def test_queries_load_once_and_by_name() -> None:
    queries = load_queries()
    assert isinstance(queries, Queries)
    assert {
        "insert_job",
        "get_job",
        "mark_processing",
        "mark_completed",
        "mark_failed",
        "find_stuck",
        "record_retry",
        "find_reusable_result",
        "recent_completed",
        "page_completed_first",
        "page_completed_after",
        "by_params",
        "user_job_quartiles",
        "list_jobs",
        "list_jobs_by_tag",
        "apply_event",
        "daily_totals",
        "totals_from_jobs",
        "reconcile_day",
        "search_tags",
        "search_user_tags",
        "upsert_user",
        "find_user_by_email",
        "insert_key",
        "revoke_key",
        "user_summary",
        "touch_login",
        "ensure_partitions",
    } <= queries.names
    assert "$1" in queries.sql("get_job")
    assert default_queries() is default_queries()
    repos = create_repositories(queries)
    assert repos.jobs._q is queries and repos.stats._q is queries
    with pytest.raises(KeyError):
        queries.sql("no_such_query")


async def test_an_email_is_found_and_still_taken_after_a_key_rotation(
    conn: asyncpg.Connection, repos: Repositories
) -> None:
    """A rotation puts a new key first; the row keeps the digest made under the old one. It is still found,
    and writing the row again stores the newest key's digest."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before, after = EmailCipher(old_key), EmailCipher(f"{new_key},{old_key}")
    user_id = unique_user()
    email = f"{user_id}@example.com"
    await repos.users.upsert(
        conn, user_id=user_id, email_encrypted=before.encrypt(email), email_digest=before.digest(email)
    )
    assert after.digest(email) != before.digest(email) and after.digests(email)[1] == before.digest(email)
    found = await repos.users.find_by_email(conn, email_digests=after.digests(email))
    assert found is not None and found.user_id == user_id
    assert after.decrypt(found.email_encrypted or b"") == email
    rewritten = await repos.users.upsert(
        conn, user_id=user_id, email_encrypted=after.encrypt(email), email_digest=after.digest(email)
    )
    assert rewritten.user_id == user_id
    row = await conn.fetchval("SELECT email_digest FROM users WHERE user_id = $1", user_id)
    assert bytes(row) == after.digest(email)
    assert await repos.users.find_by_email(conn, email_digests=before.digests(email)) is None, "the old key alone"
