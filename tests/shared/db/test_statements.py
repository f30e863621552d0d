"""shared/db/statements.py: generated from the .sql files as they are now, typed from their casts."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.db import gen_statements
from shared.db.gen_statements import GenerateError, parse, render
from shared.db.queryset import Queries


def test_committed_statements_match_the_sql_files() -> None:
    # Fails when a statement was added, renamed or changed without regenerating.
    assert gen_statements.TARGET.read_text(encoding="utf-8") == render(parse()), (
        "shared/db/statements.py is stale: run `python -m shared.db.gen_statements`"
    )
    assert gen_statements.main(["--check"]) == 0


def test_every_statement_runs_as_its_method() -> None:
    queries = Queries()
    for statement in parse():
        assert statement.name in queries.names and callable(getattr(queries, statement.name))


def _write(tmp_path: Path, sql: str) -> Path:
    (tmp_path / "one.sql").write_text(sql, encoding="utf-8")
    return tmp_path


def test_types_follow_operators_and_casts(tmp_path: Path) -> None:
    sql = """
-- name: pick(job_id, names, at, anything)^
-- A comment naming :nothing is not a parameter.
SELECT * FROM t WHERE id = :job_id::uuid AND n = ANY(:names::varchar[])
  AND at >= COALESCE(:at::timestamptz, now()) AND x = :anything;

-- name: two_casts(v)$
SELECT :v::int + :v::bigint, :v::text;

-- name: rows_of(limit)
SELECT 1 LIMIT :limit::int;

-- name: touch()!
UPDATE t SET at = now();
"""
    got = {s.name: s for s in parse(_write(tmp_path, sql))}
    assert got["pick"].returns == "asyncpg.Record | None"
    assert dict(got["pick"].params) == {
        "job_id": "UUID | None", "names": "list[str] | None", "at": "datetime | None", "anything": "Any",
    }
    assert dict(got["two_casts"].params) == {"v": "Any"}  # int and str disagree
    assert got["two_casts"].returns == "Any"
    assert got["rows_of"].returns == "list[asyncpg.Record]" and dict(got["rows_of"].params) == {"limit": "int | None"}
    assert got["touch"].returns == "str" and got["touch"].params == ()
    text = render(list(got.values()))
    assert "from uuid import UUID" in text and "async def touch(self, conn: asyncpg.Connection) -> str:" in text
    compile(text, "statements.py", "exec")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("-- name: many(a)*!\nINSERT INTO t VALUES (:a);\n", "operator"),
        ("-- name: bad(conn)^\nSELECT :conn;\n", "taken by every method"),
        ("-- name: sql()^\nSELECT 1;\n", "taken by Queries"),
    ],
)
def test_refuses_what_it_cannot_type(tmp_path: Path, sql: str, message: str) -> None:
    with pytest.raises(GenerateError, match=message):
        parse(_write(tmp_path, sql))
