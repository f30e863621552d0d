"""A migrated database of its own and a bucket of its own, on the session's real servers."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import SecretStr

from rmbg.stack import StackEndpoints
from shared.config import PostgresSettings, S3Settings
from shared.db import Database, open_database
from shared.storage import ObjectStore, open_object_store
from tests.support.databases import migrated_database


@pytest.fixture
async def maint_dsn() -> AsyncIterator[str]:
    """The DSN of a migrated database for this test alone (for what runs in a subprocess: the CLI)."""
    async with migrated_database("rmbg_maint") as dsn:
        yield dsn


@pytest.fixture
async def db(maint_dsn: str) -> AsyncIterator[Database]:
    async with open_database(PostgresSettings(dsn=SecretStr(maint_dsn), max_pool=4)) as database:
        yield database


@pytest.fixture
async def store(stack: StackEndpoints) -> AsyncIterator[ObjectStore]:
    settings = S3Settings(
        endpoint_url=stack.s3_endpoint, access_key=stack.s3_access_key, secret_key=stack.s3_secret_key,
        bucket=f"maint-{secrets.token_hex(4)}",
    )
    async with open_object_store(settings) as s3:
        await s3.ensure_bucket()
        yield s3


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2)
