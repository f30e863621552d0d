"""Schemathesis against the ingest API's own OpenAPI document, on the running pipeline: no answer is a 5xx.

The CLI runs in a subprocess so the pipeline's event loop (which serves the API in this process) keeps
running while it sends its generated requests.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

from tests.e2e.conftest import Pipeline


async def test_generated_requests_never_get_a_server_error(pipeline: Pipeline, tmp_path: Path) -> None:
    st = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    proc = await asyncio.create_subprocess_exec(
        st,
        "run",
        f"{pipeline.api_url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert re.search(r"(\d+) generated, \1 passed", text), text[-3000:]  # every generated case ran and passed
