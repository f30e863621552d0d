"""deploy/postgres/postgresql.conf: every setting carries its reason, durability is never traded away, and
archiving goes to the stanza deploy/postgres/pgbackrest.conf defines. (That PostgreSQL 15 accepts the file is
shown by the backup drill, whose cluster runs with it included: tests/rmbg/test_backup_restore.py.)"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

DEPLOY = Path(__file__).parents[2] / "deploy" / "postgres"
_SETTING = re.compile(r"^(?P<name>[a-z_]+)\s*=\s*(?P<value>'[^']*'|\S+)\s*(?:#\s*(?P<reason>.*))?$")


def _settings() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for raw in (DEPLOY / "postgresql.conf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SETTING.match(line)
        assert m, f"not a setting line: {raw!r}"
        assert m["name"] not in out, f"{m['name']} is set twice"
        out[m["name"]] = (m["value"].strip("'"), (m["reason"] or "").strip())
    return out


def test_every_setting_carries_its_reason() -> None:
    settings = _settings()
    assert len(settings) >= 30
    for name, (_, reason) in settings.items():
        assert len(reason) >= 15, f"{name} has no reason"


def test_the_seed_tuning_is_answered_setting_by_setting() -> None:
    """docs/storage.md, "Operations": the seed's eight settings are each kept or changed, with the reason."""
    settings = _settings()
    seed = {
        "max_connections": "100", "shared_buffers": "4GB", "work_mem": "16MB", "maintenance_work_mem": "1GB",
        "max_parallel_workers_per_gather": "4", "max_worker_processes": "8", "wal_level": "replica",
        "synchronous_commit": "off",
    }
    for name, seed_value in seed.items():
        value, reason = settings[name]
        if value == seed_value:
            assert "seed value, kept" in reason, name
        else:
            assert "CHANGED" in reason or "REFUSED" in reason, name


def test_synchronous_commit_off_is_refused_with_its_reason() -> None:
    settings = _settings()
    value, reason = settings["synchronous_commit"]
    assert value == "on"
    assert reason.startswith("REFUSED")
    assert "600 ms" in reason and "accepted jobs" in reason
    assert settings["fsync"][0] == "on" and settings["full_page_writes"][0] == "on"


def test_archiving_goes_to_the_stanza_pgbackrest_defines() -> None:
    settings = _settings()
    assert settings["archive_mode"][0] == "on"
    assert settings["wal_level"][0] in ("replica", "logical")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string((DEPLOY / "pgbackrest.conf").read_text())
    stanzas = [s for s in parser.sections() if s != "global"]
    assert stanzas == ["rmbg"]
    assert settings["archive_command"][0] == "pgbackrest --stanza=rmbg archive-push %p"
    assert parser.get("rmbg", "pg1-port") == "5432"
    assert int(settings["archive_timeout"][0].rstrip("s")) <= 300  # the RPO when the whole server is lost
