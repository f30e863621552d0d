"""The jobs table's two triggers cost a batch once, not once per row (issue 10 part 4).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03

`EXPLAIN ANALYZE` of one 500-job mark_completed_many (BENCHMARKS.md, "Transitions into PostgreSQL") spent
3.5 ms of its 13.4 ms in the webhook trigger of 0009 (a PL/pgSQL call and an UPDATE of webhooks per row)
and 1.0 ms in the status guard of 0001 (a PL/pgSQL call per row, also for every legal move).

- The webhook trigger becomes two statement triggers (one for INSERT, one for UPDATE) with a transition
  table: one UPDATE of webhooks per statement, joined to the rows that statement wrote. A transition
  table cannot go with a column list, so the UPDATE trigger fires for every UPDATE statement, not only
  those that SET status; the join keeps only rows that ended (completed or failed) whose webhook is still
  pending, so the effect is the row trigger's: due once, when the job ends (an operator's repair of an
  ended job finds it no longer pending). Two differences: PostgreSQL fires a statement trigger only for the
  table a statement names, so job rows must be written through image_process_jobs, not a partition (no
  code here names one; an operator's UPDATE must not either); and every INSERT or UPDATE statement keeps
  its rows for the trigger, so a bulk load of millions of rows in one statement (bench/storage/load.py)
  spills them to temporary files, where before it made one PL/pgSQL call per ended row.
- The status guard keeps its PL/pgSQL function for what it refuses, and the allowed moves move into the
  trigger's WHEN clause, which PostgreSQL evaluates inline: pending to anything, processing to anything
  but pending. The function is now reached only by a row that was terminal or goes back from processing to
  pending, and decides as before: a terminal row stays as it is unless rmbg.allow_terminal_update is on
  for the transaction, and its status never moves.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UP = [
    "DROP TRIGGER trg_jobs_webhook_due ON image_process_jobs",
    "DROP FUNCTION rmbg_webhooks_job_ended()",
    """
    CREATE FUNCTION rmbg_webhooks_jobs_ended() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        UPDATE webhooks w
        SET state = 'due', event_type = 'job.' || e.status, due_at = now(), next_attempt_at = now()
        FROM written e
        WHERE w.job_id = e.job_id AND w.state = 'pending' AND e.status IN ('completed', 'failed');
        RETURN NULL;
    END
    $fn$
    """,
    # INSERT too: intake inserts a rejected upload's job as failed directly.
    """
    CREATE TRIGGER trg_jobs_webhook_due_insert
        AFTER INSERT ON image_process_jobs REFERENCING NEW TABLE AS written
        FOR EACH STATEMENT EXECUTE FUNCTION rmbg_webhooks_jobs_ended()
    """,
    """
    CREATE TRIGGER trg_jobs_webhook_due_update
        AFTER UPDATE ON image_process_jobs REFERENCING NEW TABLE AS written
        FOR EACH STATEMENT EXECUTE FUNCTION rmbg_webhooks_jobs_ended()
    """,
    """
    CREATE OR REPLACE FUNCTION rmbg_jobs_status_guard() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        -- Reached only for the moves trg_jobs_status_guard's WHEN does not allow (from a terminal status,
        -- or from processing back to pending).
        IF NEW.status = OLD.status THEN
            IF current_setting('rmbg.allow_terminal_update', true) = 'on' THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'job % is % (a terminal state) and may not be updated', OLD.job_id, OLD.status
                USING ERRCODE = 'integrity_constraint_violation',
                      CONSTRAINT = 'image_process_jobs_status_forward_only',
                      HINT = 'a terminal job is final; create a new job to process the image again';
        END IF;
        RAISE EXCEPTION 'job % may not move from status % to %', OLD.job_id, OLD.status, NEW.status
            USING ERRCODE = 'integrity_constraint_violation',
                  CONSTRAINT = 'image_process_jobs_status_forward_only',
                  HINT = 'allowed: pending to processing, completed or failed; '
                         'processing to completed or failed';
    END
    $fn$
    """,
    "DROP TRIGGER trg_jobs_status_guard ON image_process_jobs",
    # The allowed moves, in one place. status is NOT NULL and CHECKed to the four values (0001).
    """
    CREATE TRIGGER trg_jobs_status_guard
        BEFORE UPDATE ON image_process_jobs FOR EACH ROW
        WHEN (NOT (OLD.status = 'pending' OR (OLD.status = 'processing' AND NEW.status <> 'pending')))
        EXECUTE FUNCTION rmbg_jobs_status_guard()
    """,
]

def _statement(revision_file: str, table: str, needle: str) -> str:
    """The one statement of an earlier migration's list ``table`` that contains ``needle``, as it wrote it
    (read from its file beside this one, so that the downgrade restores exactly what it created)."""
    spec = importlib.util.spec_from_file_location(f"_rmbg_{revision_file[:4]}", Path(__file__).with_name(revision_file))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (found,) = [str(s) for s in getattr(module, table) if needle in s]
    return found


def _down() -> list[str]:
    guard = _statement("0001_initial_schema.py", "_JOBS", "CREATE FUNCTION rmbg_jobs_status_guard()")
    return [
        "DROP TRIGGER trg_jobs_status_guard ON image_process_jobs",
        guard.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1),  # it exists: 0018 replaced it
        _statement("0001_initial_schema.py", "_JOBS", "CREATE TRIGGER trg_jobs_status_guard"),
        "DROP TRIGGER trg_jobs_webhook_due_update ON image_process_jobs",
        "DROP TRIGGER trg_jobs_webhook_due_insert ON image_process_jobs",
        "DROP FUNCTION rmbg_webhooks_jobs_ended()",
        _statement("0009_webhooks.py", "_UP", "CREATE FUNCTION rmbg_webhooks_job_ended()"),
        _statement("0009_webhooks.py", "_UP", "CREATE TRIGGER trg_jobs_webhook_due"),
    ]


def upgrade() -> None:
    for statement in _UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in _down():
        op.execute(statement)
