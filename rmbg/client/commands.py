"""The client's Typer commands, added to the `rmbg` app by ``register``.

Each command prints rich tables for people, or with ``--json`` exactly one JSON document on stdout (errors
too: the API's error shape) while messages and the progress bar go to stderr. An API refusal or an
unreachable API is one readable line and a non-zero exit, never a trace.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from rmbg.client import render
from rmbg.client.api import ApiClient, Connection, ObjectKind
from rmbg.client.errors import KEY_HINT, ClientError
from rmbg.client.inputs import InputError, expand_paths, parse_params, parse_tag_options
from rmbg.client.submit import Outcome, SubmitOptions, submit_all

DEFAULT_API_URL = "http://127.0.0.1:8080"
# Exit statuses: 1 a file, job or request failed; 2 the command itself cannot run as given.
EXIT_FAILED = 1
EXIT_USAGE = 2


class Status(StrEnum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"


class Kind(StrEnum):
    cutout = "cutout"
    mask = "mask"
    original = "original"


_KINDS: dict[Kind, ObjectKind] = {Kind.cutout: "cutout", Kind.mask: "mask", Kind.original: "original"}

ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="RMBG_API_URL", help="the ingest API's base URL", show_envvar=True)
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="RMBG_API_KEY", help="your key (rk_...)", show_envvar=True, show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON document instead of tables")]


def _connection(api_url: str, api_key: str | None) -> Connection:
    if not api_key or not api_key.strip():
        raise ClientError(f"no API key: {KEY_HINT}", code="no_key")
    return Connection(url=api_url, key=api_key.strip())


def _emit(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def _fail(exc: ClientError, as_json: bool, code: int = EXIT_FAILED) -> NoReturn:
    if as_json:
        _emit(exc.as_json())
    Console(stderr=True).print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(as_json: bool, api_url: str, api_key: str | None, work: Callable[[ApiClient], Awaitable[int]]) -> NoReturn:
    """Run ``work`` with a client of the API; its return is the exit status."""
    try:
        conn = _connection(api_url, api_key)
    except ClientError as exc:
        _fail(exc, as_json, EXIT_USAGE)

    async def main() -> int:
        async with ApiClient(conn, on_retry=_retry_notice) as api:
            return await work(api)

    try:
        status = asyncio.run(main())
    except ClientError as exc:
        _fail(exc, as_json)
    raise typer.Exit(status)


def _retry_notice(message: str) -> None:
    Console(stderr=True).print(f"[yellow]{message}[/yellow]", highlight=False)


def submit(
    paths: Annotated[list[Path], typer.Argument(help="image files, and directories of them (searched within)")],
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="a tag for every job (repeatable)")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="processing parameter k=v, e.g. threshold=0.5, cutout_format=webp"),
    ] = None,
    callback_url: Annotated[str | None, typer.Option(help="https URL told when each job ends")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="follow every job until it ends")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="uploads at once")] = 4,
    timeout: Annotated[float, typer.Option(min=1, help="with --wait: seconds to wait for one job")] = 600,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Submit images for background removal; a summary table at the end (exit 1 if any file failed)."""
    try:
        files = expand_paths(paths)
        opts = SubmitOptions(
            tags=parse_tag_options(tag or []),
            params=parse_params(param or []),
            callback_url=callback_url,
            wait=wait,
            concurrency=concurrency,
            timeout_s=timeout,
        )
    except InputError as exc:
        _fail(ClientError(str(exc), code="invalid_arguments"), as_json, EXIT_USAGE)

    async def work(api: ApiClient) -> int:
        outcomes = await _submit_with_progress(api, files, opts)
        if as_json:
            ok = sum(o.ok for o in outcomes)
            _emit({"items": [o.as_json() for o in outcomes], "ok": ok, "failed": len(outcomes) - ok})
        else:
            Console().print(render.submit_table(outcomes))
        return 0 if all(o.ok for o in outcomes) else EXIT_FAILED

    _run(as_json, api_url, api_key, work)


async def _submit_with_progress(api: ApiClient, files: list[Path], opts: SubmitOptions) -> list[Outcome]:
    console = Console(stderr=True)
    # Counted as they change, not recounted per update: a run may hold thousands of files.
    counts: Counter[str] = Counter()
    last: dict[int, str] = {}
    with render.submit_progress(console) as progress:
        verb = "following" if opts.wait else "submitting"
        task = progress.add_task(verb, total=len(files))

        def update(outcome: Outcome, finished: bool) -> None:
            before = last.get(id(outcome))
            if before is not None:
                counts[before] -= 1
            counts[outcome.status] += 1
            last[id(outcome)] = outcome.status
            progress.update(task, description=f"{verb}: {render.progress_line(counts)}", advance=int(finished))

        return await submit_all(api, files, opts, update)


def jobs(
    status: Annotated[Status | None, typer.Option(help="only jobs in this state")] = None,
    tag: Annotated[str | None, typer.Option(help="only jobs with this tag")] = None,
    limit: Annotated[int, typer.Option(min=1, help="show at most this many")] = 20,
    all_pages: Annotated[bool, typer.Option("--all", help="every matching job (follows the pages)")] = False,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """List your jobs, newest first."""

    async def work(api: ApiClient) -> int:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            # The API serves at most 100 a page; more than that is several pages.
            want = 100 if all_pages else min(100, limit - len(items))
            page, cursor = await api.jobs_page(
                status=status.value if status else None, tag=tag, cursor=cursor, limit=want
            )
            items.extend(page)
            if cursor is None or not page or (not all_pages and len(items) >= limit):
                break
        if as_json:
            _emit({"items": items, "next_cursor": cursor})
        else:
            Console().print(render.jobs_table(items, more=cursor is not None))
        return 0

    _run(as_json, api_url, api_key, work)


def job(
    job_id: Annotated[str, typer.Argument(help="the job id `rmbg submit` or `rmbg jobs` printed")],
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Show one job: its state, sizes, parameters, tags, error and links."""

    async def work(api: ApiClient) -> int:
        try:
            found = await api.job(job_id)
        except ClientError as exc:
            if exc.status == 404:
                exc.message = f"{exc.message}: no such job among this key's user's jobs"
            raise
        if as_json:
            _emit(found)
        else:
            Console().print(render.job_table(found))
        return 0

    _run(as_json, api_url, api_key, work)


def download(
    job_id: Annotated[str, typer.Argument(help="the job whose image to fetch")],
    kind: Annotated[Kind, typer.Option(help="which image: the cut-out, its mask or the original")] = Kind.cutout,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (or existing directory) to write; default: JOB_ID.EXT")
    ] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Download a job's cut-out (or its mask or original) to a file."""
    chosen = _KINDS[kind]

    async def work(api: ApiClient) -> int:
        got = await api.download(job_id, chosen, lambda resp: target_path(output, job_id, chosen, resp))
        if as_json:
            _emit(
                {"job_id": job_id, "kind": chosen, "path": str(got.path), "bytes": got.bytes, "type": got.content_type}
            )
        else:
            Console().print(
                f"saved the {chosen} of {job_id} to [bold]{got.path}[/bold] "
                f"({render.human_bytes(got.bytes)}, {got.content_type or 'unknown type'})",
                highlight=False,
            )
        return 0

    _run(as_json, api_url, api_key, work)


def target_path(output: Path | None, job_id: str, kind: str, resp: httpx.Response) -> Path:
    """``output`` when it names a file; else ``JOB_ID.EXT`` (``JOB_ID.mask.EXT`` for other kinds, so the
    three never overwrite each other) in ``output`` or here, EXT being the object's own extension."""
    if output is not None and not output.is_dir():
        return output
    name = f"{job_id}{'' if kind == 'cutout' else '.' + kind}{object_suffix(resp)}"
    return (output or Path()) / name


def object_suffix(resp: httpx.Response) -> str:
    """The extension of the object served: its attachment name, the object key (a presigned URL's path),
    or its media type, in that order of trust."""
    disposition = resp.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and PurePosixPath(value.strip('"')).suffix:
            return PurePosixPath(value.strip('"')).suffix.lower()
    suffix = PurePosixPath(resp.url.path).suffix.lower()
    if suffix in (".png", ".webp", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif"):
        return suffix
    media = resp.headers.get("content-type", "").split(";")[0].strip()
    return (mimetypes.guess_extension(media) if media else None) or ".bin"


def stats(
    days: Annotated[int, typer.Option(min=1, max=366, help="jobs of the last N days")] = 30,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Your jobs of the last days by state, and their average processing time."""

    async def work(api: ApiClient) -> int:
        got = await api.stats(days=days)
        if as_json:
            _emit(got)
        else:
            Console().print(render.stats_table(got, days))
        return 0

    _run(as_json, api_url, api_key, work)


def tags_search(
    text: Annotated[str, typer.Argument(help="text to match your tags against, fuzzily")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="at most this many")] = 10,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Find your tags most like TEXT (trigram similarity)."""

    async def work(api: ApiClient) -> int:
        items = await api.search_tags(text, limit=limit)
        if as_json:
            _emit({"items": items})
        else:
            Console().print(render.tags_table(text, items))
        return 0

    _run(as_json, api_url, api_key, work)


def register(app: typer.Typer) -> None:
    """Add the client's commands to ``app`` (built here, not at import, so importing costs nothing)."""
    app.command("submit")(submit)
    app.command("jobs")(jobs)
    app.command("job")(job)
    app.command("download")(download)
    app.command("stats")(stats)
    tags_app = typer.Typer(help="Your tags: find the ones like a text.", no_args_is_help=True)
    tags_app.command("search")(tags_search)
    app.add_typer(tags_app, name="tags")
