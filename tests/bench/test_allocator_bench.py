"""bench/allocator.py, tiny: one pass per policy, each in its own interpreter; the table is checked for
sanity (both policies, the policy applied where asked), not for its figures."""

from __future__ import annotations

import pytest

from bench import allocator


@pytest.mark.timeout(300)
def test_one_round_of_both_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert allocator.main(["--policies", "0", "32", "--rounds", "1", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 0 |", "| 32 |"))]
    assert [r.split(" | ")[1] for r in rows] == ["False", "True"], rows
