"""Keyset pagination returns every row exactly once, in order, even when many rows share a timestamp."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.db.repositories import Repositories
from tests.shared.db.conftest import JobFactory, rolled_back, unique_user

BASE = datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)

# Each group is one millisecond holding `size` rows; statuses mix in rows the page must skip.
groups = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=12)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=groups, page_size=st.integers(min_value=1, max_value=7), with_noise=st.booleans())
async def test_page_completed_returns_each_row_once(
    clean_conn: asyncpg.Connection,
    repos: Repositories,
    raw_job: JobFactory,
    groups: list[tuple[int, int]],
    page_size: int,
    with_noise: bool,
) -> None:
    async with rolled_back(clean_conn) as conn:
        expected: list[tuple[datetime, UUID]] = []
        for offset_ms, size in groups:
            at = BASE + timedelta(milliseconds=offset_ms)
            for i in range(size):
                job_id = await raw_job(conn, at=at, user_id=unique_user())
                expected.append((at, job_id))
                if with_noise and i % 3 == 0:
                    await raw_job(conn, at=at, user_id=unique_user(), status="pending")
        expected.sort(reverse=True)

        seen: list[tuple[datetime, UUID]] = []
        before: tuple[datetime, UUID] | None = None
        for _ in range(len(expected) + 2):
            page = await repos.jobs.page_completed(conn, before=before, limit=page_size)
            if not page:
                break
            assert len(page) <= page_size
            seen.extend((r.created_at, r.job_id) for r in page)
            before = (page[-1].created_at, page[-1].job_id)
        assert seen == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=4),
    page_size=st.integers(min_value=1, max_value=5),
)
async def test_list_jobs_cursor_returns_each_row_once(
    clean_conn: asyncpg.Connection,
    repos: Repositories,
    raw_job: JobFactory,
    sizes: list[int],
    page_size: int,
) -> None:
    async with rolled_back(clean_conn) as conn:
        user = unique_user()
        expected: list[tuple[datetime, UUID]] = []
        for offset_ms, size in enumerate(sizes):
            at = BASE + timedelta(milliseconds=offset_ms)
            for i in range(size):
                status = ("completed", "pending", "failed", "processing")[i % 4]
                expected.append((at, await raw_job(conn, at=at, user_id=user, status=status)))
        expected.sort(reverse=True)

        seen: list[tuple[datetime, UUID]] = []
        cursor: str | None = None
        for _ in range(len(expected) + 2):
            rows, cursor = await repos.jobs.list_jobs(conn, user_id=user, cursor=cursor, limit=page_size)
            seen.extend((r.created_at, r.job_id) for r in rows)
            if cursor is None:
                break
        assert seen == expected
