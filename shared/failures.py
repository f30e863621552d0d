"""The failure taxonomy every handler applies per record (docs/failures.md).

``classify`` reads the class from the exception's type (our own carry it, see shared/exceptions.py) or,
for the libraries we call, from what the protocol says: PostgreSQL's SQLSTATE class, Kafka's error
code, S3's status. It never matches on message text.
"""

from __future__ import annotations

import asyncio
import re
from enum import StrEnum

import aiohttp
import asyncpg
from aiokafka import errors as kafka_errors
from botocore import exceptions as boto_errors

from shared.exceptions import PermanentError, TransientError


class FailureClass(StrEnum):
    PERMANENT = "permanent"  # the record can never succeed: fail the job or dead-letter it
    TRANSIENT = "transient"  # a dependency is down: rewind, back off, retry, skip nothing
    UNKNOWN = "unknown"  # neither is known: a bounded number of retries, then permanent


# SQLSTATE classes (the first two characters) that say "try again": connection exceptions, resources,
# operator intervention (shutdown, restart), transaction rollbacks (serialization, deadlock), system errors,
# and those that fail every record alike because the deployment is wrong (a missing table or column from
# a migration not yet run, a missing database or schema, a permission): stall and alert, skip nothing.
_PG_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58", "42", "3D", "3F"})
# ...and single codes of classes that are otherwise about the code (25P02, a statement in a transaction
# that already failed, fails the same way every time): a server in the wrong state, a read-only standby or
# a copy still restoring (25006; unclassified, a failover that still pointed at the demoted primary gave
# every record up after its bounded retries, about 60 s), a lock not granted within lock_timeout (55P03)
# or an object in use (55006).
_PG_TRANSIENT_STATES = frozenset({"25006", "55P03", "55006"})
# ...and those that say "this statement with these values will never work": data exceptions (a NUL byte,
# a value out of range), integrity violations, and syntax or access rule violations in a given record.
_PG_PERMANENT_CLASSES = frozenset({"22", "23"})

# Kafka errors that no retry can fix for the same record; every other broker error is about the broker.
_KAFKA_PERMANENT = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
    kafka_errors.RecordTooLargeError,
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def classify(exc: BaseException) -> FailureClass:
    """The failure class of ``exc`` for the record that raised it."""
    if isinstance(exc, PermanentError):
        return FailureClass.PERMANENT
    if isinstance(exc, TransientError):
        return FailureClass.TRANSIENT
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        state = sqlstate[:2]
        if state in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_STATES:
            return FailureClass.TRANSIENT
        if state in _PG_PERMANENT_CLASSES:
            return FailureClass.PERMANENT
        return FailureClass.UNKNOWN
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing": the client lost its server.
        return FailureClass.TRANSIENT
    if isinstance(exc, kafka_errors.KafkaError):
        return FailureClass.PERMANENT if isinstance(exc, _KAFKA_PERMANENT) else FailureClass.TRANSIENT
    if isinstance(exc, aiohttp.ClientError):
        # aiobotocore reads bodies through aiohttp: a store that closes mid-body raises ClientPayloadError.
        return FailureClass.TRANSIENT
    if isinstance(exc, boto_errors.BotoCoreError):
        # Endpoint unreachable, read/connect timeouts, closed connections: all about the server.
        return FailureClass.TRANSIENT
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return FailureClass.TRANSIENT
    if isinstance(exc, OSError) and exc.errno is not None:
        # A socket-level error (ECONNRESET, EHOSTUNREACH...) from a client library without its own type.
        return FailureClass.TRANSIENT
    return FailureClass.UNKNOWN


def clean_text(text: str, *, limit: int = 2000) -> str:
    """Text safe to store and log: control characters (NUL first: PostgreSQL refuses it) become '?'."""
    cleaned = _CONTROL.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def describe(exc: BaseException, *, limit: int = 2000) -> str:
    """A readable one-line reason for a job's ``error_message`` or a dead letter."""
    reason = getattr(exc, "reason", None)
    text = reason if isinstance(reason, str) and reason else str(exc)
    if not isinstance(exc, PermanentError | TransientError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return clean_text(" ".join(text.split()), limit=limit)
