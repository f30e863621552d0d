"""The C allocator's policy for large blocks: keep freed memory for reuse instead of returning it at once.

Every 1024x1024 job allocates and frees buffers of 3-12 MiB (decoded RGB, RGBA, float32 tensors, encoder
planes). glibc serves blocks above its mmap threshold with fresh mmap()s and gives them back on free(); its
threshold starts at 128 KiB and rises towards 32 MiB as big blocks are freed, and it returns the heap's free
top to the kernel past twice that. A job's buffers freed together exceed that trim threshold, so the next job
faults them in and has the kernel zero them again. Measured (`python -m bench.allocator`, BENCHMARKS.md "CPU
per image"): on the project's own per-job image path a job paid about 24 ms of system time in 8,300-8,600
page faults with glibc's policy (in one round of three its threshold adapted and a job paid 3 ms), and none
with the policy below, at the same peak RSS; end to end the persister used 8-14% less CPU per job and held
20-36 MiB more.

The policy fixes the thresholds where glibc's own adjustment ends (32 MiB, DEFAULT_MMAP_THRESHOLD_MAX on
64-bit, also the most older glibc accepts): each arena (about one per thread that allocates) may then keep up
to twice that free for reuse. Blocks over it (a 12 MP photo's 47 MiB RGBA) are mapped afresh as before.
mallopt(3) is glibc's; with another C library (musl) nothing is changed and the caller is told so.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MAX_REUSE_BELOW_MIB = 32


def reuse_freed_memory(below_mib: int) -> bool:
    """Serve blocks under ``below_mib`` MiB from the heap and keep up to twice that free per arena for reuse.

    0 leaves the C library's own policy. Returns whether the policy is now in place; call it once, at
    process start, before the image pools run.
    """
    if not 0 <= below_mib <= MAX_REUSE_BELOW_MIB:
        raise ValueError(f"reuse_below_mib must be 0-{MAX_REUSE_BELOW_MIB}, not {below_mib}")
    if below_mib == 0:
        return False
    if platform.libc_ver()[0] != "glibc":
        log.warning("not glibc: RMBG_MEMORY__REUSE_BELOW_MIB=%d is not applied", below_mib)
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: glibc's, found without ldconfig
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    size = below_mib << 20
    # Either call also stops glibc's own adjustment of both thresholds (mallopt(3)).
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, size) == 1)
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, 2 * size) == 1)
    if not (mmap_set and trim_set):
        log.warning(
            "mallopt took the mmap threshold: %s, the trim threshold: %s (for %d MiB)", mmap_set, trim_set, below_mib
        )
    return mmap_set and trim_set
