"""UsersRepository, TagsRepository and the query loader."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from shared.db import Queries, default_queries, load_queries
from shared.db.repositories import Repositories, create_repositories
from tests.shared.db.conftest import unique_user


async def test_user_upsert_keeps_what_is_not_given(conn: asyncpg.Connection, repos: Repositories) -> None:
    user_id = unique_user()
    created = await repos.users.upsert(conn, user_id=user_id)
    assert created.username == user_id and created.email is None and created.last_login is None
    named = await repos.users.upsert(conn, user_id=user_id, username="Ada", email=f"{user_id}@example.com")
    assert (named.username, named.email) == ("Ada", f"{user_id}@example.com")
    again = await repos.users.upsert(conn, user_id=user_id)
    assert (again.username, again.email, again.created_at) == ("Ada", f"{user_id}@example.com", created.created_at)

    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert await repos.users.touch_login(conn, user_id=user_id, at=at) is True
    got = await repos.users.get(conn, user_id=user_id)
    assert got is not None and got.last_login == at
    assert await repos.users.touch_login(conn, user_id="nobody-" + user_id) is False
    assert await repos.users.get(conn, user_id="nobody-" + user_id) is None

    other = unique_user()
    with pytest.raises(asyncpg.UniqueViolationError):
        await repos.users.upsert(conn, user_id=other, email=f"{user_id}@example.com")


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
        "upsert_user",
        "touch_login",
        "ensure_partitions",
    } <= queries.names
    assert "$1" in queries.sql("get_job")
    assert default_queries() is default_queries()
    repos = create_repositories(queries)
    assert repos.jobs._q is queries and repos.stats._q is queries
    with pytest.raises(KeyError):
        queries.sql("no_such_query")
