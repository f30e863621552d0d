"""System tools some tests drive for real (pgBackRest, postgres_exporter, PostgreSQL's server binaries).

A missing tool fails the test with what to install, never skips it: a skipped drill reads as a passed one.
`make test` installs them first (the Makefile's `dbtools` target).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def require_tool(name: str, *, package: str, where: Path | None = None) -> Path:
    """The executable ``name`` (on PATH, or in ``where``); fails the test with how to install it."""
    found = shutil.which(name, path=str(where) if where else None)
    if found is None:
        pytest.fail(
            f"{name} is not installed: run `make dbtools` (or apt-get install -y --no-install-recommends {package})",
            pytrace=False,
        )
    return Path(found)
