"""The C allocator's policy for large blocks: keep freed memory for reuse instead of returning it at once.

Every 1024x1024 job allocates and frees buffers of 3-12 MiB (decoded RGB, RGBA, float32 tensors, encoder
planes). glibc serves blocks above its mmap threshold (128 KiB, raised at most to 32 MiB as big blocks are
freed) with fresh mmap()s and gives them back on free(), so each such buffer is faulted in again page by page
and zeroed by the kernel. Measured (`python -m bench.allocator`, BENCHMARKS.md "CPU per image"): on the
project's own per-job image path a job paid about 24 ms of system time in 8,300-8,600 page faults with glibc's
policy (in one round of three glibc's own threshold adapted and it paid 3 ms), and none with blocks under
64 MiB kept in the heap, at the same peak RSS; end to end the persister used 8-14% less CPU per job for
20-36 MiB more RSS.

mallopt(3) is glibc's; on another C library (musl) nothing is changed and the caller is told so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory(below_mib: int) -> bool:
    """Serve blocks under ``below_mib`` MiB from the heap and keep up to twice that free for reuse.

    0 leaves the C library's own policy. Returns whether the policy is now in place; call it once, at
    process start, before the image pools run.
    """
    if below_mib <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("no glibc mallopt here: the C library's own allocation policy stays")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either threshold also stops glibc's own adjustment of both (mallopt(3)).
    size = below_mib << 20
    done = bool(mallopt(_M_MMAP_THRESHOLD, size) == 1 and mallopt(_M_TRIM_THRESHOLD, 2 * size) == 1)
    if not done:
        log.warning("mallopt refused a %d MiB threshold: the C library's own allocation policy stays", below_mib)
    return done
