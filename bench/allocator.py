"""The per-job image path's CPU with and without the allocator policy (shared/allocator.py).

Run: ``.venv/bin/python -m bench.allocator`` (``--policies 0 32 --rounds 3 --repeats 6``). Prints a Markdown
table.

Each (round, policy) runs in a fresh interpreter, since the policy is per process and cannot be undone: it
sets ``reuse_freed_memory(MIB)`` first (0: glibc's own policy), builds the tiny test model, then runs the
project's own image functions for each of the five sample photos at 1024x1024 JPEG q90, as one job meets
them: ingest's ``inspect_image``, inference's ``decode_rgb`` + ``backend.predict`` + ``encode_mask_png``,
the persister's ``make_cutout`` (decode again, the mask's decode, compose, WebP) with a near-binary matte
(the tiny model's thresholded and blurred by 1 px, as ``bench.cpu`` makes it). One untimed pass, then
REPEATS passes over the five photos in one thread; CPU (user and system) and minor page faults from
``getrusage`` per job, and the process's peak RSS. Policies alternate within each round.

``--threads N ...`` runs the timed passes in a pool of N threads instead, as the services' image pools do
(one thread per core: 16 on a 16-core host). Each thread allocates from an arena of its own, and each arena
may keep up to twice the policy's size of freed memory, so the table also gives the RSS left once the work
is done: what a many-core host holds between jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import UTC, datetime

from bench.cpu import run_header

_CHILD = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
from shared.allocator import reuse_freed_memory
applied = reuse_freed_memory(int(sys.argv[1]))
from bench.cpu import load_tiny_backend, load_uploads, make_mattes
from shared.contracts.events import CutoutFormat
from shared.imaging import DEFAULT_WEBP_QUALITY, decode_rgb, encode_mask_png, inspect_image, make_cutout

backend = load_tiny_backend()
jobs = []
for _name, jpeg in load_uploads(1024):
    matte = make_mattes(backend.predict([decode_rgb(jpeg)])[0], 0)["near-binary"]
    jobs.append((jpeg, encode_mask_png(matte)))

def job(jpeg, mask_png):
    inspect_image(jpeg, max_bytes=1 << 30, max_pixels=1 << 30)
    encode_mask_png(backend.predict([decode_rgb(jpeg)])[0])
    make_cutout(jpeg, mask_png, CutoutFormat.WEBP, DEFAULT_WEBP_QUALITY)

def memory_mib():
    # The resident set now and its high-water mark, from one read of /proc/self/status: read apart (the
    # peak from getrusage earlier), the set could grow in between and show more than the peak.
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))

threads = int(sys.argv[3])
for jpeg, mask_png in jobs:
    job(jpeg, mask_png)
before = resource.getrusage(resource.RUSAGE_SELF)
work = [pair for _ in range(int(sys.argv[2])) for pair in jobs]
if threads == 1:
    for jpeg, mask_png in work:
        job(jpeg, mask_png)
else:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda pair: job(*pair), work))
after = resource.getrusage(resource.RUSAGE_SELF)
rss_now, rss_peak = memory_mib()
n = len(work)
print(json.dumps({
    "threads": threads,
    "rss_end_mib": rss_now,
    "applied": applied,
    "user_ms": (after.ru_utime - before.ru_utime) / n * 1000,
    "system_ms": (after.ru_stime - before.ru_stime) / n * 1000,
    "faults": (after.ru_minflt - before.ru_minflt) / n,
    "max_rss_mib": rss_peak,
}))
"""


def measure(policy_mib: int, repeats: int, threads: int = 1) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(policy_mib), str(repeats), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.allocator", description=__doc__.splitlines()[0])
    p.add_argument("--policies", type=int, nargs="+", default=[0, 32], help="reuse_below_mib values (0: glibc's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=6, help="timed passes over the five photos per run")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="pool sizes to run the passes in")
    args = p.parse_args(argv)
    if min(args.threads) < 1:
        p.error("--threads must be at least 1")
    started = datetime.now(UTC)
    runs: dict[tuple[int, int], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for threads in args.threads:
            for policy in args.policies:
                runs.setdefault((policy, threads), []).append(m := measure(policy, args.repeats, threads))
                print(f"round {r + 1}, policy {policy}, threads {threads}: {m}", file=sys.stderr, flush=True)
    print("### The per-job image path by allocator policy (`python -m bench.allocator`)\n")
    print(run_header(started, "glibc malloc, the tiny test model"), end="")
    print(f"{args.rounds} rounds of {args.repeats} x 5 jobs.\n")
    print(
        "| reuse_below_mib | threads | applied | CPU ms per job (user + system), each round | of which system ms "
        "| minor faults per job | peak RSS MiB | RSS after MiB |"
    )
    print("|---:|---:|---|---|---|---|---:|---:|")
    for (policy, threads), ms in runs.items():
        cpu = ", ".join(f"{m['user_ms'] + m['system_ms']:.1f}" for m in ms)
        system = ", ".join(f"{m['system_ms']:.1f}" for m in ms)
        faults = ", ".join(f"{m['faults']:.0f}" for m in ms)
        peak = statistics.median(m["max_rss_mib"] for m in ms)
        end = statistics.median(m["rss_end_mib"] for m in ms)
        applied = all(m["applied"] for m in ms)
        print(f"| {policy} | {threads} | {applied} | {cpu} | {system} | {faults} | {peak:.0f} | {end:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
