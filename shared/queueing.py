"""Where a job's request landed in the jobs topic, recorded for the sweeper (services/persister/sweeper.py)."""

from __future__ import annotations

import logging
import uuid

import asyncpg
from aiokafka.structs import RecordMetadata

from shared.db import Database

log = logging.getLogger(__name__)


async def record_queue_position(db: Database, job_id: uuid.UUID, landed: RecordMetadata) -> None:
    """Store where the broker put the job's request; if this fails the sweeper queues it again (harmless)."""
    try:
        async with db.pool.acquire() as conn:
            await db.jobs.mark_queued(conn, job_id=job_id, partition=landed.partition, offset=landed.offset)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("queue position of job %s not recorded (%s); the sweeper may queue it again", job_id, exc)
