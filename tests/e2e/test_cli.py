"""The `rmbg` client commands, run as a person runs them (a subprocess) against the whole pipeline."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rmbg.demo import sample_bytes
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def readable(self) -> None:
        """An error is a line for a person: never a trace."""
        assert "Traceback" not in self.out + self.err, self.out + self.err


async def _rmbg(pipeline: Pipeline, *args: str, key: str | None, cwd: Path | None = None) -> Ran:
    # Subprocesses, so the pipeline's services keep running on this test's event loop meanwhile.
    env = {**os.environ, "RMBG_API_URL": pipeline.api_url, "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("RMBG_API_KEY", None)
    if key is not None:
        env["RMBG_API_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rmbg.cli",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _samples(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(sample_bytes(name))
    return folder


async def test_submit_wait_download_list_stats_tags(pipeline: Pipeline, tmp_path: Path) -> None:
    key = await pipeline.key("cli-alice")
    photos = _samples(tmp_path / "photos", "astronaut.png", "coffee.png", "rocket.jpg")
    (photos / "notes.txt").write_text("not picked up: a directory gives its images only")

    ran = await _rmbg(
        pipeline, "submit", str(photos), "--tag", "cli-walk", "-p", "threshold=0.5", "--wait", "--json", key=key
    )
    assert ran.code == 0, ran.out + ran.err
    doc = ran.json()
    assert (doc["ok"], doc["failed"]) == (3, 0)
    items = doc["items"]
    assert sorted(Path(i["file"]).name for i in items) == ["astronaut.png", "coffee.png", "rocket.jpg"]
    assert all(i["status"] == "completed" and i["job"]["processed_bytes"] for i in items), items
    assert all(i["job"]["tags"] == ["cli-walk"] and i["job"]["params"]["threshold"] == 0.5 for i in items)
    job_ids = {i["job_id"] for i in items}

    # A rerun of the same files is answered by the jobs made the first time (the Idempotency-Key).
    again = await _rmbg(
        pipeline, "submit", str(photos / "coffee.png"), "--tag", "cli-walk", "-p", "threshold=0.5", "--json", key=key
    )
    assert again.code == 0, again.err
    assert again.json()["items"][0]["job_id"] in job_ids
    assert again.json()["items"][0]["created"] is False

    job_id = next(i["job_id"] for i in items if i["file"].endswith("coffee.png"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    got = await _rmbg(pipeline, "download", job_id, "-o", str(out_dir), "--json", key=key)
    assert got.code == 0, got.out + got.err
    path = Path(got.json()["path"])
    assert path.parent == out_dir and path.name.startswith(job_id) and path.suffix in (".png", ".webp")
    with Image.open(path) as cutout:
        assert cutout.format in ("PNG", "WEBP") and cutout.mode == "RGBA"
        assert cutout.size == Image.open(io.BytesIO(sample_bytes("coffee.png"))).size
    mask = await _rmbg(pipeline, "download", job_id, "--kind", "mask", key=key, cwd=tmp_path)
    assert mask.code == 0, mask.err
    assert "saved the mask" in mask.out
    assert any(name.startswith(f"{job_id}.mask.") for name in _names(tmp_path)), _names(tmp_path)

    listed = await _rmbg(pipeline, "jobs", "--tag", "cli-walk", "--json", key=key)
    assert listed.code == 0, listed.err
    assert {j["job_id"] for j in listed.json()["items"]} == job_ids
    page = await _rmbg(pipeline, "jobs", "--limit", "2", "--json", key=key)
    assert len(page.json()["items"]) == 2 and page.json()["next_cursor"]
    every = await _rmbg(pipeline, "jobs", "--limit", "1", "--all", "--status", "completed", "--json", key=key)
    assert {j["job_id"] for j in every.json()["items"]} >= job_ids
    table = await _rmbg(pipeline, "jobs", "--limit", "5", key=key)
    assert table.code == 0 and job_id in table.out and "completed" in table.out

    shown = await _rmbg(pipeline, "job", job_id, key=key)
    assert shown.code == 0 and "completed" in shown.out and "cli-walk" in shown.out, shown.out

    stats = await _rmbg(pipeline, "stats", "--days", "1", "--json", key=key)
    assert stats.code == 0, stats.err
    assert stats.json()["user_id"] == "cli-alice" and stats.json()["completed_jobs"] >= 3
    assert "completed" in (await _rmbg(pipeline, "stats", key=key)).out

    tags = await _rmbg(pipeline, "tags", "search", "cli-wal", "--json", key=key)
    assert tags.code == 0, tags.err
    assert "cli-walk" in [t["name"] for t in tags.json()["items"]]
    assert "cli-walk" in (await _rmbg(pipeline, "tags", "search", "walk", key=key)).out


async def test_a_bad_file_is_named_in_the_summary_and_fails_the_run(pipeline: Pipeline, tmp_path: Path) -> None:
    key = await pipeline.key("cli-bob")
    good = _samples(tmp_path, "chelsea.png") / "chelsea.png"
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is text, not an image")

    ran = await _rmbg(pipeline, "submit", str(good), str(bad), "--wait", "--json", key=key)
    assert ran.code == 1, ran.out + ran.err
    by_name = {Path(i["file"]).name: i for i in ran.json()["items"]}
    assert by_name["chelsea.png"]["status"] == "completed" and by_name["chelsea.png"]["ok"]
    refused = by_name["notes.png"]
    assert refused["status"] == "refused" and not refused["ok"] and refused["job_id"] is None
    assert refused["error"], refused

    table = await _rmbg(pipeline, "submit", str(bad), str(good), "--wait", key=key)
    table.readable()
    assert table.code == 1
    assert "notes.png" in table.out and refused["error"][:40] in table.out and "refused" in table.out
    assert "1 of 2 files ok" in table.out


async def test_another_users_job_is_a_readable_refusal(pipeline: Pipeline) -> None:
    async with pipeline.client("cli-carol") as carol:
        resp = await carol.post("/v1/jobs", files={"image": ("c.png", sample_bytes("coffee.png"), "image/png")})
        assert resp.status_code in (200, 202), resp.text
        carols = resp.json()["job_id"]
    key = await pipeline.key("cli-dave")
    for command in (["job", carols], ["download", carols]):
        ran = await _rmbg(pipeline, *command, key=key)
        ran.readable()
        assert ran.code == 1 and ran.out == ""
        assert f"no job {carols}" in ran.err, ran.err
    as_json = await _rmbg(pipeline, "job", carols, "--json", key=key)
    assert as_json.code == 1 and as_json.json()["error"]["code"] == "not_found"


async def test_no_key_a_wrong_key_and_no_api_say_what_to_do(pipeline: Pipeline) -> None:
    missing = await _rmbg(pipeline, "jobs", key=None)
    missing.readable()
    assert missing.code == 2 and missing.out == ""
    assert "no API key" in missing.err and "rmbg keys create --user" in missing.err
    assert (await _rmbg(pipeline, "stats", "--json", key=None)).json()["error"]["code"] == "no_key"

    wrong = await _rmbg(pipeline, "stats", key="rk_not-a-key")
    wrong.readable()
    assert wrong.code == 1 and "rmbg keys create --user" in wrong.err

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = await _rmbg(pipeline, "jobs", "--api-url", f"http://127.0.0.1:{port}", key="rk_x")
    down.readable()
    assert down.code == 1 and "cannot reach the API" in down.err
