"""Progress lines on stderr with the elapsed time (the report itself goes to stdout)."""

from __future__ import annotations

import sys
import time

_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:8.1f}s] {message}", file=sys.stderr, flush=True)
