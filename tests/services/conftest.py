"""What the handler tests of every service share: real servers, and resources of the module's own.

``service_common`` gives the connection settings a service's settings class is built from, with topics
and a bucket unique to the module (created here) and, when the module asks for ``service_db``, a freshly
migrated database of its own, so that what a test counts is only what the module did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from rmbg.stack import StackEndpoints
from shared.config import BaseServiceSettings, PostgresSettings
from shared.messaging import ensure_topics
from shared.storage import open_object_store
from tests.e2e.conftest import base_settings
from tests.support.databases import migrated_database


@pytest.fixture(scope="module")
async def service_dsn() -> AsyncIterator[str]:
    """A migrated database for this module alone, dropped at its end."""
    async with migrated_database("rmbg_svc") as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def service_common(stack: StackEndpoints, service_dsn: str) -> dict[str, object]:
    """Keyword arguments for any service's settings: the module's database, topics and bucket, all created."""
    common = {**base_settings(stack), "postgres": PostgresSettings(dsn=SecretStr(service_dsn), max_pool=4)}
    base = BaseServiceSettings(**common)  # type: ignore[arg-type]
    await ensure_topics(base.kafka, base.topics)
    async with open_object_store(base.s3) as store:
        await store.ensure_bucket()
    return common
