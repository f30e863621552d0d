"""shared.runtime.cpu_cores: the size of the services' CPU pools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.runtime import cpu_cores

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no quota: the affinity
        ("50000 100000\n", 1),  # half a core still gets one thread
        ("150000 100000\n", min(AFFINITY, 2)),  # 1.5 cores: two threads, never more than the affinity
        ("10000000 100000\n", AFFINITY),
        ("garbage\n", AFFINITY),
    ],
)
def test_cores_follow_affinity_and_cgroup_quota(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert cpu_cores(str(path)) == expected


def test_no_cgroup_file_means_the_affinity(tmp_path: Path) -> None:
    assert cpu_cores(str(tmp_path / "missing")) == AFFINITY
    assert cpu_cores() >= 1
