# Two set-up commands: `make run` (install if needed, then the demo stack) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck check bench bench-pipeline clean chaos load browsers dbtools monitoring

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel on disk here; a looser spec downloads a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rmbg up --demo

test: $(STAMP) browsers dbtools monitoring
	$(BIN)/pytest -q

# The gallery's browser test (tests/e2e/test_gallery.py) drives Debian's chromium: Playwright cannot
# download its own browsers here. Installed only when missing; the package lists are refreshed only
# when the install fails, so a machine with fresh lists makes no extra network round trip.
browsers:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$SUDO apt-get install -y --no-install-recommends chromium \
		|| { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }; \
	}

# The database tools tests drive for real (tests/support/tools.py): pgBackRest for the backup and restore
# drill (tests/rmbg/test_backup_restore.py), Debian's prometheus-postgres-exporter for the exporter test.
# Installed only when missing, the same way as chromium above.
dbtools:
	@{ command -v pgbackrest && command -v prometheus-postgres-exporter; } >/dev/null 2>&1 || { \
		SUDO=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$SUDO apt-get install -y --no-install-recommends pgbackrest prometheus-postgres-exporter \
		|| { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends pgbackrest prometheus-postgres-exporter; }; \
	}

# promtool and prometheus for tests/deploy/test_monitoring.py (the alert rules, their unit tests, and a real
# Prometheus scraping the running pipeline): Debian's prometheus package, installed only when missing.
monitoring:
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || { \
		SUDO=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$SUDO apt-get install -y --no-install-recommends prometheus \
		|| { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends prometheus; }; \
	}

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy shared services rmbg bench

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench.storage --help

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache

# Fault drill (rmbg/drills/chaos.py): >= 2,000 jobs while every process is killed; bounded, loopback only.
chaos: $(STAMP)
	$(BIN)/python -c 'from pathlib import Path; from tests.support.tiny_rmbg import build_tiny_rmbg as b; b(Path(".state/drill-model/tiny_rmbg"))'
	timeout 1500 $(BIN)/python -m rmbg.drills.chaos --model-source .state/drill-model/tiny_rmbg --state-dir .state/chaos

# Load drill (rmbg/drills/load.py): a steady rate for 10 minutes; throughput, latency p50/p95/p99 and
# every service's memory at warm-up and at the end. Bounded, loopback only.
load: $(STAMP)
	$(BIN)/python -c 'from pathlib import Path; from tests.support.tiny_rmbg import build_tiny_rmbg as b; b(Path(".state/drill-model/tiny_rmbg"))'
	timeout 1800 $(BIN)/python -m rmbg.drills.load --model-source .state/drill-model/tiny_rmbg --state-dir .state/load

# End-to-end bench (bench/pipeline.py): a sweep of offered rates (0.5 1 1.5 2 3 4 8 12 16 20 jobs/s, 45 s each, stopped once
# the pipeline falls behind) on one embedded stack with the tiny model; jobs/s, latency p50/p95/p99, stage
# breakdown and CPU per job by process, as Markdown. Bounded (about 15 minutes at most), loopback only.
bench-pipeline: $(STAMP)
	$(BIN)/python -c 'from pathlib import Path; from tests.support.tiny_rmbg import build_tiny_rmbg as b; b(Path(".state/drill-model/tiny_rmbg"))'
	timeout 1800 $(BIN)/python -m bench.pipeline --model-source .state/drill-model/tiny_rmbg --state-dir .state/bench-pipeline $(ARGS)
