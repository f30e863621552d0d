"""Every advisory lock spelled out in SQL (queries and migrations) is one of shared/db/locks.py, and
every registered lock is taken somewhere: the registry and the SQL cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from shared.db.locks import LOCK_CLASS, AdvisoryLock

ROOT = Path(__file__).resolve().parents[3]
_CALL = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?(?:un)?lock(?:_shared)?\s*\(([^)]*)\)")


def _sources() -> list[Path]:
    return sorted((ROOT / "shared" / "db" / "queries").glob("*.sql")) + sorted(
        (ROOT / "migrations" / "versions").glob("*.py")
    )


def test_sql_takes_only_registered_locks() -> None:
    seen: set[int] = set()
    for path in _sources():
        for args in _CALL.findall(path.read_text()):
            parts = [p.strip() for p in args.split(",")]
            where = f"{path.name}: lock ({args})"
            assert len(parts) == 2 and parts[0] == str(LOCK_CLASS), f"{where} is outside class {LOCK_CLASS}"
            objid = int(parts[1])
            assert objid in set(AdvisoryLock), f"{path.name}: lock ({args}) is not in shared/db/locks.py"
            seen.add(objid)
    # The migrations lock is taken from Python (shared/db/migrate.py), with the registry's names.
    migrate = (ROOT / "shared" / "db" / "migrate.py").read_text()
    if "AdvisoryLock.MIGRATIONS" in migrate:
        seen.add(AdvisoryLock.MIGRATIONS)
    assert seen == set(AdvisoryLock), f"registered but never taken: {set(AdvisoryLock) - seen}"
