"""PostgreSQL binary COPY of fixed-width columns, encoded with numpy (no per-row Python).

The binary format is a header, then per row a 16-bit field count and per field a 32-bit length and
the value in network byte order, then a -1 trailer. With only fixed-width, non-NULL fields every row
has the same layout, so a numpy structured array is the whole payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01 in Unix ms

# PostgreSQL type -> big-endian numpy field type.
_WIRE: dict[str, str] = {
    "bigint": ">i8",
    "integer": ">i4",
    "smallint": ">i2",
    "boolean": "u1",
    "timestamptz": ">i8",  # microseconds since 2000-01-01
    "uuid": "V16",
    "bytea32": "V32",
}


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # a key of _WIRE

    @property
    def sql_type(self) -> str:
        return "bytea" if self.pg_type == "bytea32" else self.pg_type


def timestamptz(ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Unix milliseconds as the binary timestamptz value."""
    return (ms - PG_EPOCH_MS) * 1000


def encode(columns: Sequence[Column], values: Sequence[npt.NDArray[np.generic]]) -> bytes:
    """One complete binary COPY payload (header, rows, trailer) for the given column arrays.

    uuid and bytea32 values are (n, 16) / (n, 32) uint8 arrays; the rest one-dimensional numbers.
    """
    n = int(values[0].shape[0])
    fields: list[tuple[str, str]] = [("nf", ">i2")]
    for i, col in enumerate(columns):
        fields += [(f"l{i}", ">i4"), (f"v{i}", _WIRE[col.pg_type])]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["nf"] = len(columns)
    for i, (col, arr) in enumerate(zip(columns, values, strict=True)):
        width = np.dtype(_WIRE[col.pg_type]).itemsize
        rows[f"l{i}"] = width
        if col.pg_type in ("uuid", "bytea32"):
            rows[f"v{i}"] = np.ascontiguousarray(arr, dtype=np.uint8).view(f"V{width}").reshape(n)
        else:
            rows[f"v{i}"] = arr
    return HEADER + rows.tobytes() + TRAILER


def chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))
