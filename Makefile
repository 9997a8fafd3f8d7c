# ganforge: `make run` runs the main job, `make test` the test suite.
# Both create .venv on first use and install the package into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test test-fast coverage lint compare clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[eval,pipeline,serve,server,dev]"
	@touch $@

run: $(STAMP) ## the whole pipeline (dvc repro): prepare, featurenet, train, evaluate, export, promote
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP) ## the whole test suite, slow end-to-end tests included
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the suite without the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

coverage: $(STAMP) ## the whole suite once under coverage: src/ganforge's line coverage (slower than test)
	rm -rf .coverage-data && mkdir .coverage-data
	COVERAGE_FILE=$(CURDIR)/.coverage-data/cov $(BIN)/python -m pytest --cov --cov-report= --durations=25
	COVERAGE_FILE=$(CURDIR)/.coverage-data/cov $(BIN)/coverage combine -q .coverage-data
	COVERAGE_FILE=$(CURDIR)/.coverage-data/cov $(BIN)/coverage report | tail -n 45

compare: $(STAMP) ## experiments side by side: the headline metrics and the params that matter most
	$(BIN)/dvc exp show --no-pager --md --drop '.*' --keep "$$($(BIN)/python -m ganforge.metrics.headline)"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests pipelines
	$(BIN)/ruff format --check src tests pipelines

clean: ## remove outputs of runs (keeps .venv)
	rm -rf data/prepared models/*/ metrics reports exported
