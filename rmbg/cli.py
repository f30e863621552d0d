"""The `rmbg` command line (Typer: typed options, help text and completion for free)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from rmbg.client.commands import register as register_client
from shared.config import BaseServiceSettings, TelemetrySettings
from shared.runtime import run_service
from shared.telemetry import configure_logging

app = typer.Typer(
    help="rmbg-pipeline: background removal with RMBG-2.0 over Kafka, PostgreSQL and S3.", no_args_is_help=True
)
register_client(app)  # submit, jobs, job, download, stats, tags: the API's client (rmbg/client/)


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="process the bundled sample photos end to end")] = False,
    state_dir: Annotated[Path, typer.Option(help="where embedded servers keep their data")] = Path(".state"),
    backend: Annotated[str, typer.Option(help="rmbg (transformers model) or classic (GrabCut, no weights)")] = "",
    model_source: Annotated[str, typer.Option(help="hub id or local folder of the model")] = "briaai/RMBG-2.0",
    model_name: Annotated[str | None, typer.Option(help="catalogue name stored (default: the source's)")] = None,
    api_port: Annotated[int | None, typer.Option(help="HTTP port of the ingest API")] = None,
) -> None:
    """Start the stack (servers not configured in the environment, then the four services)."""
    from rmbg.up import UpOptions, run_up

    configure_logging(TelemetrySettings(log_level="WARNING"))
    chosen = backend or ("classic" if demo else "rmbg")
    if chosen not in ("rmbg", "classic"):
        raise typer.BadParameter("backend must be rmbg or classic")
    kind: Literal["rmbg", "classic"] = "classic" if chosen == "classic" else "rmbg"
    opts = UpOptions(
        state_dir=state_dir,
        demo=demo,
        backend=kind,
        model_source=model_source,
        model_name=model_name,
        api_port=api_port,
    )
    console = Console()
    raise typer.Exit(run_service(lambda stop: run_up(opts, stop, console)))


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from shared.db.migrate import current, upgrade

    dsn = BaseServiceSettings().postgres.dsn.get_secret_value()
    upgrade(dsn, revision)
    typer.echo(f"database at revision {current(dsn)}")


@app.command()
def serve(service: Annotated[str, typer.Argument(help="ingest | inference | persister | stats")]) -> None:
    """Run one service in the foreground (what a Kubernetes pod runs)."""
    import importlib

    if service not in ("ingest", "inference", "persister", "stats"):
        raise typer.BadParameter(f"unknown service {service}")
    importlib.import_module(f"services.{service}.main").main()


@app.command("stats-reconcile")
def stats_reconcile(
    day: Annotated[str, typer.Argument(help="YYYY-MM-DD (UTC)")],
) -> None:
    """Recompute one day of processing_stats from the jobs table (repair after an outage)."""
    from datetime import date

    from rmbg.admin import reconcile_day

    configure_logging(TelemetrySettings())
    result = asyncio.run(reconcile_day(BaseServiceSettings(), date.fromisoformat(day)))
    typer.echo(result)


@app.command("retention")
def retention_cmd(
    older_than: Annotated[str, typer.Option("--older-than", help="age like 180d")] = "180d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only, change nothing")] = False,
) -> None:
    """Remove jobs older than the age: whole monthly partitions dropped, their objects deleted
    unless a newer job still derives the same key."""
    from rmbg.admin import retention
    from rmbg.maintenance.retention import parse_age

    configure_logging(TelemetrySettings(log_level="WARNING"))
    report = asyncio.run(retention(BaseServiceSettings(), older_than_days=parse_age(older_than), dry_run=dry_run))
    typer.echo(report.summary())


@app.command("fsck")
def fsck_cmd(
    repair: Annotated[bool, typer.Option("--repair", help="delete orphans, rebuild missing cut-outs")] = False,
    grace_s: Annotated[int, typer.Option(help="ignore objects younger than this (in-flight intakes)")] = 3600,
) -> None:
    """Find rows whose objects are missing and objects no row references."""
    from rmbg.admin import fsck

    configure_logging(TelemetrySettings(log_level="WARNING"))
    report = asyncio.run(fsck(BaseServiceSettings(), repair=repair, grace_s=grace_s))
    typer.echo(report.summary())
    for job_id, key in report.missing[:50]:
        typer.echo(f"missing  {job_id}  {key}")
    for key in report.orphans[:50]:
        typer.echo(f"orphan   {key}")
    # With --repair, success means nothing is left broken: what it could not rebuild (a lost original or
    # mask) still fails the command, so a script after a restore does not take the data for whole.
    raise typer.Exit(0 if report.clean or (repair and not report.unrecoverable) else 1)


@app.command("doctor")
def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="also measure index/table bloat (pgstattuple)")] = False,
) -> None:
    """Database health: connections, cache hits, long queries and transactions, bloat, partitions ahead,
    WAL archiving, replication, durability. Exits 1 when a check fails (thresholds: RMBG_DOCTOR__*)."""
    import json

    from rmbg.maintenance.doctor import DoctorSettings, run_doctor

    configure_logging(TelemetrySettings(log_level="WARNING"))
    dsn = BaseServiceSettings().postgres.dsn.get_secret_value()
    report = asyncio.run(run_doctor(dsn, DoctorSettings(), deep=deep))
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        for check in report.checks:
            typer.echo(f"{check.verdict.value:<5} {check.name:<19} {check.summary}")
            if check.verdict.value != "ok":
                typer.echo(f"{'':<25} hint: {check.hint}")
        typer.echo(f"doctor: {report.verdict.value}")
    raise typer.Exit(report.exit_code)


@app.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON")] = False,
) -> None:
    """The models this deployment serves (RMBG_MODELS__SERVED), each with its licence and whether
    commercial use is allowed; the same list as GET /v1/models."""
    import json

    from rich.table import Table

    from services.ingest.settings import IngestSettings

    models = IngestSettings().models  # ingest's view: it refuses jobs for any model not listed here
    listing = models.listing()
    if as_json:
        typer.echo(json.dumps({"default": models.default, "items": listing}, indent=2))
        return
    table = Table("model", "default", "hub id", "licence", "commercial use", "note")
    for m in listing:
        table.add_row(
            str(m["name"]),
            "yes" if m["default"] else "",
            str(m["hub_id"] or ""),
            str(m["licence"]),
            "allowed" if m["commercial_use"] else "NO (needs a licence agreement)",
            str(m["note"]),
        )
    Console().print(table)


@app.command("backup")
def backup_cmd(
    kind: Annotated[str, typer.Option("--type", help="full | diff | incr (pgBackRest: incr after a full)")] = "incr",
    create_stanza: Annotated[
        bool, typer.Option("--create-stanza", help="first run: create the stanza and check archiving")
    ] = False,
    sha256: Annotated[bool, typer.Option("--sha256", help="hash every object into the manifest (reads all)")] = False,
    versioning: Annotated[bool, typer.Option(help="turn on the result bucket's versioning first")] = True,
) -> None:
    """Back up the database with pgBackRest, then write the manifest of every object key (size, checksum,
    version) next to the backup. Settings: RMBG_BACKUP__* (docs/backups.md)."""
    from rmbg.maintenance.backup import BackupError, BackupSettings, run_backup

    if kind not in ("full", "diff", "incr"):
        raise typer.BadParameter("full, diff or incr", param_hint="--type")
    configure_logging(TelemetrySettings(log_level="WARNING"))
    settings = BaseServiceSettings()
    try:
        report = asyncio.run(
            run_backup(
                settings.postgres.dsn.get_secret_value(), settings.s3, BackupSettings(),
                kind=kind,  # type: ignore[arg-type]  # checked above
                create_stanza=create_stanza, sha256=sha256, versioning=versioning,
            )
        )
    except BackupError as exc:
        typer.echo(f"backup failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.summary())


@app.command("restore")
def restore_cmd(
    target_time: Annotated[
        str | None, typer.Option("--target-time", help="ISO time with zone; default: the archive's end")
    ] = None,
    backup_set: Annotated[str | None, typer.Option("--set", help="a backup label (default: pgBackRest picks)")] = None,
    pg_path: Annotated[Path | None, typer.Option(help="restore into this data directory (default: pg1-path)")] = None,
    delta: Annotated[bool, typer.Option("--delta", help="reuse matching files of a non-empty data directory")] = False,
    archive_mode: Annotated[
        str, typer.Option(help="preserve | off: off when the restored copy must not archive into the same stanza")
    ] = "preserve",
) -> None:
    """Restore the database with pgBackRest (point in time with --target-time). Start PostgreSQL on the
    directory afterwards: it replays WAL to the target and promotes; then run rmbg restore-verify."""
    from datetime import datetime

    from rmbg.maintenance.backup import BackupError, BackupSettings, run_restore

    if archive_mode not in ("preserve", "off"):
        raise typer.BadParameter("preserve or off", param_hint="--archive-mode")
    try:
        target = datetime.fromisoformat(target_time) if target_time else None
    except ValueError:
        raise typer.BadParameter("an ISO time, e.g. 2026-05-01T12:00:00+00:00", param_hint="--target-time") from None
    configure_logging(TelemetrySettings(log_level="WARNING"))
    try:
        report = asyncio.run(
            run_restore(
                BackupSettings(), target_time=target, backup_set=backup_set, pg_path=pg_path, delta=delta,
                archive_mode="off" if archive_mode == "off" else "preserve",
            )
        )
    except BackupError as exc:
        typer.echo(f"restore failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.summary())
    if report.manifest_path:
        typer.echo(f"then: rmbg restore-verify --manifest {report.manifest_path}")


@app.command("restore-verify")
def restore_verify_cmd(
    manifest: Annotated[Path, typer.Option("--manifest", help="the backup's manifest (rmbg backup prints it)")],
    content: Annotated[bool, typer.Option("--content", help="hash each object, compare with the manifest")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="copy missing or changed objects back (versions)")] = False,
) -> None:
    """Check a restored database against its backup's manifest: every object of every job exists, with the
    manifest's size (and checksum, --content). Exits 1 while anything is missing or differs."""
    from rmbg.maintenance.backup import load_manifest, verify_restore

    configure_logging(TelemetrySettings(log_level="WARNING"))
    settings = BaseServiceSettings()
    report = asyncio.run(
        verify_restore(
            settings.postgres.dsn.get_secret_value(), settings.s3, load_manifest(manifest),
            content=content, repair=repair,
        )
    )
    typer.echo(report.summary())
    for job_id, key in report.missing[:50]:
        typer.echo(f"missing  {job_id}  {key}")
    for job_id, key, what in report.mismatched[:50]:
        typer.echo(f"differs  {job_id}  {key}  {what}")
    for key in report.repaired[:50]:
        typer.echo(f"restored {key}")
    raise typer.Exit(0 if report.clean else 1)


dlq_app = typer.Typer(help="Dead letters: records a service gave up on, with the reason.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    source: Annotated[str | None, typer.Option(help="only letters from this source topic")] = None,
    limit: Annotated[int, typer.Option(help="show at most this many, newest last")] = 100,
) -> None:
    """List dead letters: reference (partition:offset), age, source, service, failure class and reason."""
    from datetime import UTC, datetime

    from rmbg.maintenance.dlq import read_dead_letters
    from shared.contracts import Topics

    configure_logging(TelemetrySettings(log_level="WARNING"))
    settings = BaseServiceSettings()
    letters = asyncio.run(
        read_dead_letters(settings.kafka, Topics.from_settings(settings.topics, settings.kafka), source=source)
    )
    now = datetime.now(UTC)
    for stored in letters[-limit:]:
        letter = stored.letter
        typer.echo(
            f"{stored.ref:>10}  {_age(stored.age_s(now)):>6}  {letter.source_topic}[{letter.partition}]@{letter.offset}"
            f"  {letter.service}  {letter.failure_class}  {letter.reason}"
        )
    typer.echo(f"{len(letters)} dead letters" + (f" from {source}" if source else ""))


@dlq_app.command("replay")
def dlq_replay(
    refs: Annotated[list[str], typer.Argument(help="letters to replay, as partition:offset from `rmbg dlq list`")],
) -> None:
    """Send the chosen dead letters' records back to their source topics (after fixing the cause)."""
    from rmbg.maintenance.dlq import ReplayRefused, read_dead_letters, replay
    from shared.contracts import Topics

    configure_logging(TelemetrySettings(log_level="WARNING"))
    settings = BaseServiceSettings()
    topics = Topics.from_settings(settings.topics, settings.kafka)

    async def run() -> int:
        letters = await read_dead_letters(settings.kafka, topics)
        try:
            sent = await replay(settings.kafka, topics, letters, refs)
        except ReplayRefused as exc:
            typer.echo(f"refused: {exc}", err=True)
            return 1
        for stored in sent:
            typer.echo(f"replayed {stored.ref} to {stored.letter.source_topic}")
        return 0

    raise typer.Exit(asyncio.run(run()))


keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="the user the key acts for (created if new)")],
    admin: Annotated[bool, typer.Option("--admin", help="may read global views (all users' stats)")] = False,
    name: Annotated[str | None, typer.Option(help="a label for lists, e.g. the client's name")] = None,
    email: Annotated[str | None, typer.Option(help="the user's email (stored encrypted)")] = None,
    rate: Annotated[float | None, typer.Option(help="requests/s for this key (default: the service's)")] = None,
    daily_quota: Annotated[int | None, typer.Option(help="jobs per UTC day (default: the service's)")] = None,
) -> None:
    """Create a key and print it once: only a hash of it is stored."""
    from rmbg.access import create_key
    from shared.contracts import UserId
    from shared.exceptions import ContractError

    configure_logging(TelemetrySettings(log_level="WARNING"))
    try:
        TypeAdapter(UserId).validate_python(user)
    except ValidationError:
        raise typer.BadParameter("1-64 characters of A-Z a-z 0-9 . _ @ : -", param_hint="--user") from None
    try:
        issued = asyncio.run(
            create_key(
                BaseServiceSettings(),
                user_id=user,
                admin=admin,
                name=name,
                email=email,
                rate_per_s=rate,
                daily_quota=daily_quota,
            )
        )
    except ContractError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(issued.key)
    kind = "admin key" if admin else "key"
    typer.echo(f"{kind} {issued.record.key_id} for user {user}: shown once, store it now", err=True)


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", help="only this user's keys")] = None,
) -> None:
    """List keys (id, user, admin, created, last used, revoked); never the secrets."""
    from rich.table import Table

    from rmbg.access import list_keys

    configure_logging(TelemetrySettings(log_level="WARNING"))
    records = asyncio.run(list_keys(BaseServiceSettings(), user_id=user))
    table = Table("key id", "user", "admin", "name", "created", "last used", "revoked")
    for k in records:
        table.add_row(
            k.key_id,
            k.user_id,
            "yes" if k.is_admin else "",
            k.name or "",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key id from `rmbg keys list`")]) -> None:
    """Revoke a key: the next request with it is refused."""
    from rmbg.access import revoke_key

    configure_logging(TelemetrySettings(log_level="WARNING"))
    record, cache_cleared = asyncio.run(revoke_key(BaseServiceSettings(), key_id=key_id))
    if record is None:
        typer.echo(f"no key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id} (user {record.user_id}) at {record.revoked_at:%Y-%m-%d %H:%M:%S}")
    if not cache_cleared:
        typer.echo("warning: Redis did not answer; the key may still work until its cache entry lapses", err=True)
        raise typer.Exit(2)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def main() -> None:
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
