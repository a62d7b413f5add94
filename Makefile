# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing; a stamp keyed on pyproject.toml's and constraints.txt's hash avoids
# reinstalling. constraints.txt pins every package to the versions the tests last passed with.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
export MAMMO_HOME ?= $(CURDIR)/mammo-home
export DAGSTER_HOME ?= $(MAMMO_HOME)/dagster
PYTEST_ARGS ?=

.PHONY: venv test lint demo ui label bench pictures clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/mammo home >/dev/null
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/mammo demo

ui: $(STAMP)
	$(BIN)/mammo home >/dev/null
	$(BIN)/dagster dev -w workspace.yaml

label: $(STAMP)
	$(BIN)/mammo label

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

pictures: $(STAMP)
	$(BIN)/python -m mammo_pipeline.docs_pictures
	MAMMO_UPDATE_PICTURES=1 $(BIN)/pytest -q -m browser mammo_pipeline_tests/labels/test_browser.py

clean:
	rm -rf mammo-home .pytest_cache
