"""Schemathesis against the ingest API's own OpenAPI document, on the running pipeline: no answer is a 5xx.

The CLI runs in a subprocess so the pipeline's event loop (which serves the API in this process) keeps
running while it sends its generated requests. It authenticates with an admin key (``-H``), so the
generated requests reach every handler, the admin views included, and not only the 401 in front of them.
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
    key = await pipeline.key("fuzz", admin=True)
    proc = await asyncio.create_subprocess_exec(
        st,
        "run",
        f"{pipeline.api_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        # Revoking a key: the stateful phase would follow GET /v1/keys to its own key and revoke it, and
        # every later request would only test the 401 (tests/e2e/test_access.py covers revocation).
        "--exclude-name",
        "DELETE /v1/keys/{key_id}",
        # Below the API's per-key limit (RMBG_INGEST__RATE_LIMIT_PER_S, 20/s), so requests reach the handlers.
        "--rate-limit",
        "15/s",
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
    text = out.decode(errors="replace").replace(key, "rk_<fuzz key>")
    assert proc.returncode == 0, text[-6000:]
    # The key worked: no operation answered only 401/403 (schemathesis warns when one does).
    assert "Authentication failed" not in text, text[-3000:]
    assert re.search(r"(\d+) generated, \1 passed", text), text[-3000:]  # every generated case ran and passed
