"""A short run of bench.cutout_alpha: every encoder it compares keeps alpha exact, and the table has every row."""

from __future__ import annotations

from bench.cpu import MATTES
from bench.cutout_alpha import TEXTURED_SHARES, encoders, run


def test_a_small_run_reports_every_matte_and_encoder_with_exact_alpha() -> None:
    report, exact = run(size=64, repeats=1)
    assert exact, report
    assert "every output's alpha equals its matte" in report
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    kinds = len(MATTES) + len(TEXTURED_SHARES)
    assert len(rows) == 1 + kinds * len(encoders()), report  # the header and one row per matte and encoder
