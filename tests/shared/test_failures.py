"""The failure taxonomy's classification (pure: exceptions built by hand, no I/O)."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest
from aiokafka import errors as kafka_errors
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from shared.exceptions import (
    ContractError,
    Deferred,
    ImageRejected,
    ModelFailed,
    ObjectMissing,
    ObjectTooLarge,
    Overloaded,
    StorageRefused,
    StorageUnavailable,
)
from shared.failures import FailureClass, classify, clean_text, describe

P, T, U = FailureClass.PERMANENT, FailureClass.TRANSIENT, FailureClass.UNKNOWN


def _pg(sqlstate: str) -> asyncpg.PostgresError:
    exc = asyncpg.PostgresError("server said no")
    exc.sqlstate = sqlstate  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ImageRejected("corrupt image", code="corrupt"), P),
        (ContractError("malformed"), P),
        (ObjectMissing("gone"), P),
        (ObjectTooLarge("big"), P),
        (StorageRefused("key too long"), P),
        (ModelFailed("nan"), P),
        (StorageUnavailable("503"), T),
        (Overloaded("busy", retry_after_s=5), T),
        (Deferred("after an earlier record"), T),
        (asyncpg.CharacterNotInRepertoireError("NUL"), P),  # 22021: a NUL byte in text
        (asyncpg.UniqueViolationError("dup"), P),  # 23505
        (asyncpg.ConnectionDoesNotExistError("gone"), T),  # 08003
        (asyncpg.DeadlockDetectedError("deadlock"), T),  # 40P01
        (asyncpg.TooManyConnectionsError("full"), T),  # 53300
        (asyncpg.AdminShutdownError("restart"), T),  # 57P01
        (asyncpg.UndefinedTableError("no table"), T),  # 42P01: a migration not yet run stalls, skips nothing
        (asyncpg.ReadOnlySQLTransactionError("read-only"), T),  # 25006: a standby, or a restore still replaying
        (asyncpg.LockNotAvailableError("lock_timeout"), T),  # 55P03
        (asyncpg.InFailedSQLTransactionError("aborted"), U),  # 25P02: the code's, fails the same every time
        (_pg("XX000"), U),  # internal error: nobody knows
        (asyncpg.InterfaceError("connection is closed"), T),
        (kafka_errors.KafkaConnectionError("down"), T),
        (kafka_errors.KafkaTimeoutError(), T),
        (kafka_errors.MessageSizeTooLargeError(), P),
        (EndpointConnectionError(endpoint_url="http://s3"), T),
        (ReadTimeoutError(endpoint_url="http://s3"), T),
        (aiohttp.ClientPayloadError("closed mid-body"), T),
        (ConnectionResetError(104, "reset"), T),
        (TimeoutError(), T),
        (MemoryError(), U),  # says nothing about the record: retried, never "corrupt"
        (RuntimeError("a bug"), U),
        (KeyError("x"), U),
    ],
)
def test_classify(exc: BaseException, expected: FailureClass) -> None:
    assert classify(exc) is expected


def test_reasons_are_readable_and_storable() -> None:
    assert describe(ImageRejected("corrupt image: truncated", code="corrupt")) == "corrupt image: truncated"
    assert describe(RuntimeError("line one\nline two")) == "RuntimeError: line one line two"
    assert clean_text("tag\x00with\x07controls") == "tag?with?controls"
    long = clean_text("x" * 5000, limit=2000)
    assert len(long) == 2000 and long.endswith("…")
