"""rmbg backup / restore refuse what cannot work before running anything (no server needed)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from rmbg.maintenance.backup import BackupError, BackupSettings, PgBackRest, run_restore
from tests.support.tools import require_tool

DEPLOY = Path(__file__).parents[3] / "deploy" / "postgres"


def test_root_without_run_as_is_refused_and_with_it_goes_through_runuser() -> None:
    require_tool("pgbackrest", package="pgbackrest")
    settings = BackupSettings(config=DEPLOY / "pgbackrest.conf")
    if os.geteuid() != 0:
        assert PgBackRest(settings).argv("info")[0].endswith("pgbackrest")
        return
    with pytest.raises(BackupError, match="RMBG_BACKUP__RUN_AS=postgres"):
        PgBackRest(settings).argv("info")
    argv = PgBackRest(settings.model_copy(update={"run_as": "postgres"})).argv("info")
    assert argv[:4] == ["runuser", "-u", "postgres", "--"]
    assert f"--config={DEPLOY / 'pgbackrest.conf'}" in argv and "--stanza=rmbg" in argv


def test_a_missing_pgbackrest_says_what_to_install() -> None:
    with pytest.raises(BackupError, match="make dbtools"):
        PgBackRest(BackupSettings(pgbackrest="no-such-pgbackrest")).argv("info")


def test_manifests_go_next_to_the_repository(tmp_path: Path) -> None:
    assert PgBackRest(BackupSettings(config=DEPLOY / "pgbackrest.conf")).manifest_dir() == Path(
        "/var/lib/pgbackrest/rmbg-manifests/rmbg"
    )
    s3_repo = tmp_path / "s3.conf"
    s3_repo.write_text("[global]\nrepo1-type=s3\nrepo1-path=/rmbg\n[rmbg]\npg1-path=/data\n")
    with pytest.raises(BackupError, match="RMBG_BACKUP__MANIFEST_DIR"):
        PgBackRest(BackupSettings(config=s3_repo)).manifest_dir()
    chosen = tmp_path / "manifests"
    assert PgBackRest(BackupSettings(config=s3_repo, manifest_dir=chosen)).manifest_dir() == chosen


async def test_a_target_time_without_a_zone_is_refused() -> None:
    with pytest.raises(BackupError, match="time zone"):
        await run_restore(BackupSettings(), target_time=datetime(2026, 5, 1, 12, 0))
