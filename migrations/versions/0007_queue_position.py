"""Where each job's request sits in the jobs topic, and an epoch for object deletions.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

- queue_partition / queue_offset: set once the broker acknowledged the job's request. The sweeper judges
  a job lost only when its request was never acknowledged, or was consumed and committed by inference and
  still no result arrived; a job merely waiting in a long queue is never re-queued or failed
  (docs/failures.md). Both NULL-able columns without defaults: adding them rewrites nothing.
- object_deletion_epoch: retention draws a value after it deletes objects (under the objects lock).
  Intake stores an original without holding a database connection, then compares the epoch under the
  shared lock: if retention deleted objects in between, it stores the original again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE image_process_jobs ADD COLUMN queue_partition smallint, ADD COLUMN queue_offset bigint"
    )
    op.execute("CREATE SEQUENCE object_deletion_epoch")


def downgrade() -> None:
    op.execute("DROP SEQUENCE IF EXISTS object_deletion_epoch")
    op.execute("ALTER TABLE image_process_jobs DROP COLUMN queue_offset, DROP COLUMN queue_partition")
