# The whole developer workflow. Each target sets up what it needs on a fresh machine.
#   make serve   run the service on the default model (HOST, PORT, ASD_* from the environment)
#   make test    install everything (serving + training + dev tools) and run the tests
#   make bench   scoring and serving benchmark; writes BENCHMARKS.md (2-5 minutes)
#   make soak    long loopback load test of a real server (RELIABILITY.md)
#   make quality detection quality over families, seeds and SNRs; writes QUALITY.md (hours; QUALITY_ARGS)
#   make calibration does the calibrated false-alarm rate hold on fresh normal clips? CALIBRATION.md (~1 h)
#   make lint    ruff (rules and format), mypy, import contracts, hadolint: what CI runs before the tests
#   make docker-smoke   build the image, run it, score a real clip (needs a Docker engine)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: serve test bench soak quality calibration audit docker-smoke lint schema install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip>=25.1"

# Serving needs only the base dependencies; training and tests add the `train` extra and the dev group.
$(VENV)/.serve-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[train,watch]" --group dev
	touch $@ $(VENV)/.serve-installed

install: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed

serve: $(VENV)/.serve-installed
	ASD_HOST="$${ASD_HOST:-$(HOST)}" ASD_PORT="$${ASD_PORT:-$(PORT)}" $(BIN)/asd-serve

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# 10,000 requests against a real asd-serve on 127.0.0.1 (about 3 minutes); see RELIABILITY.md.
soak: $(VENV)/.dev-installed
	$(BIN)/python -m tests.reliability.soak --requests $${SOAK_REQUESTS:-10000} --concurrency $${SOAK_CONCURRENCY:-32}

# The full default grid (README, "Quality benchmark"); an interrupted run resumes from reports/quality/.
calibration: $(VENV)/.dev-installed
	$(BIN)/python -m bench.calibration --out CALIBRATION.md $(CALIBRATION_ARGS)

quality: $(VENV)/.dev-installed
	$(BIN)/python -m training.cli benchmark --out QUALITY.md $(QUALITY_ARGS)

# pip-audit of constraints.txt: exit 1 on a fixable vulnerability, 2 if no database is reachable.
audit: $(VENV)/.dev-installed
	$(BIN)/python -m tests.reliability.audit

docker-smoke:
	scripts/docker-smoke.sh

# The gates CI runs before the tests (and .pre-commit-config.yaml runs on commit).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service training bench watcher
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

# docs/threshold.schema.json from service.bundle.Bundle (tests/test_bundle_format.py fails when stale).
schema: $(VENV)/.serve-installed
	$(BIN)/python scripts/threshold_schema.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
