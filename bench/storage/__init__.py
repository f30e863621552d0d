"""Storage benchmark: our schema against the seed design's, on the same generated jobs.

Run ``python -m bench.storage --help``. The figures it writes are summarised in BENCHMARKS.md,
section "Storage at 10 million jobs".
"""
