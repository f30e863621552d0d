"""rmbg/access.py create_key against a real database and Redis: an email stays one user's across a rotation
of RMBG_AUTH__ENCRYPTION_KEYS (the rows keep digests made under the keys before it)."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from rmbg.access import create_key
from shared.auth.crypto import EmailCipher
from shared.config import AuthSettings, BaseServiceSettings, PostgresSettings, RedisSettings
from shared.db import open_database
from shared.exceptions import ContractError
from tests.support.databases import migrated_database


def _settings(dsn: str, redis_url: str, keys: str) -> BaseServiceSettings:
    return BaseServiceSettings(
        environment="test",
        postgres=PostgresSettings(dsn=SecretStr(dsn)),
        redis=RedisSettings(url=redis_url),
        auth=AuthSettings(encryption_keys=SecretStr(keys)),
    )


async def test_an_email_stays_one_users_across_a_key_rotation(redis_url: str) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    async with migrated_database("rmbg_test_access") as dsn:
        await create_key(_settings(dsn, redis_url, old_key), user_id="ada", admin=False, name=None, email="a@x.example")
        rotated = _settings(dsn, redis_url, f"{new_key},{old_key}")
        with pytest.raises(ContractError, match="belongs to another user"):
            await create_key(rotated, user_id="bob", admin=False, name=None, email="A@x.example ")
        # Its own user may name it again; the row is then digested under the newest key.
        await create_key(rotated, user_id="ada", admin=False, name=None, email="a@x.example")
        async with open_database(rotated.postgres) as db, db.pool.acquire() as conn:
            digest = await conn.fetchval("SELECT email_digest FROM users WHERE user_id = 'ada'")
            assert await conn.fetchval("SELECT count(*) FROM users WHERE email_digest IS NOT NULL") == 1
        assert bytes(digest) == EmailCipher(f"{new_key},{old_key}").digest("a@x.example")
