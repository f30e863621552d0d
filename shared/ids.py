"""Time-ordered job ids (UUIDv7, RFC 9562).

PostgreSQL 15 has no ``uuidv7()``, so ids are made here. The job's ``created_at`` is the id's own
millisecond timestamp: a lookup by id can therefore name its monthly partition and touch one index.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import UTC, datetime


def uuid7(at: datetime | None = None, *, entropy: bytes | None = None) -> uuid.UUID:
    """A UUIDv7 for ``at`` (now by default).

    With ``entropy`` the 74 random bits come from its SHA-256, so the same upstream event always maps
    to the same job id (idempotent intake) while the id stays time-ordered.
    """
    moment = at or datetime.now(UTC)
    ms = int(moment.timestamp() * 1000)
    if not 0 <= ms < 1 << 48:
        # The 48-bit field would wrap: year 1 became year 8920, and 1969 an id no datetime can read back.
        raise ValueError(f"a UUIDv7 holds 1970-01-01 to 10889-08-02, not {moment.isoformat()}")
    rand = hashlib.sha256(entropy).digest()[:10] if entropy is not None else os.urandom(10)
    rand_int = int.from_bytes(rand, "big")
    rand_a = (rand_int >> 68) & 0xFFF  # 12 bits
    rand_b = rand_int & ((1 << 62) - 1)  # 62 bits
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rand_a << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def uuid7_time(job_id: uuid.UUID) -> datetime:
    """The creation instant embedded in a UUIDv7 (millisecond precision, UTC)."""
    if job_id.version != 7:
        raise ValueError(f"{job_id} is not a UUIDv7")
    ms = job_id.int >> 80
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def upload_job_id(event_id: str, occurred_at: datetime) -> uuid.UUID:
    """The same upload event always maps to the same job id: redelivery creates no second job."""
    return uuid7(occurred_at, entropy=f"upload-event:{event_id}".encode())
