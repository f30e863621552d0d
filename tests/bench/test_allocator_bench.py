"""bench/allocator.py, tiny: one pass per policy, each in its own interpreter; the table is checked for
sanity (both policies, the policy applied where asked), not for its figures."""

from __future__ import annotations

import pytest

from bench import allocator


@pytest.mark.timeout(300)
def test_one_round_of_both_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert allocator.main(["--policies", "0", "32", "--rounds", "1", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 0 |", "| 32 |"))]
    assert [r.split(" | ")[1:3] for r in rows] == [["1", "False"], ["1", "True"]], rows


@pytest.mark.timeout(300)
def test_a_pool_of_threads(capsys: pytest.CaptureFixture[str]) -> None:
    assert allocator.main(["--policies", "32", "--rounds", "1", "--repeats", "1", "--threads", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 32 |")]
    assert len(rows) == 1 and rows[0].split(" | ")[1:3] == ["3", "True"], rows
    peak, end = (float(cell) for cell in rows[0].strip(" |").split(" | ")[-2:])
    assert 0 < end <= peak
