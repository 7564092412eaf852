# callgate developer entry points. `make run` and `make test` are the two commands the
# README promises; .ci/run calls `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The runtime install (callgate and its dependencies), then the test tools on top; or the
# build tools alone (a wheel).
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
BUILD := $(VENV)/.build-tools
# pyproject.toml's [build-system] requires: what `make wheel` builds with (no build
# isolation: nothing fetched while building).
BUILD_REQUIRES := 'setuptools>=68' wheel
# setuptools warns of "folders in your working directory with the same name as your
# package" on every editable install, and pip -q passes a build backend's warnings on:
# not callgate's output. Errors and other warnings still show.
EDITABLE := PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install -q -e

.PHONY: run test lint unit sandbox bench wheel clean bytecode

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "callgate needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): $(BIN)/python setup.cfg pyproject.toml
	$(EDITABLE) .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(EDITABLE) '.[test]'
	touch $(STAMP)

$(BUILD): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(BUILD_REQUIRES)
	touch $(BUILD)

## bytecode: compile callgate's modules (as pip does for a wheel), so that no process
## compiles them at its start (a Python run with PYTHONDONTWRITEBYTECODE never caches
## them itself); quick when nothing changed
bytecode: $(RUNTIME)
	$(BIN)/python -m compileall -q gate agi

## run: install callgate (no test tools) into .venv and serve FastAGI with the sample
## config and an embedded Redis
run: $(RUNTIME) bytecode
	$(BIN)/callgate --config config/callgate.toml run

## test: install, lint, type-check and run the whole suite (end-to-end included), on every
## core (pytest-xdist): the tests that start Asterisk run one after the other on one worker
## (their xdist_group), the rest on the others meanwhile
test: $(STAMP) bytecode sandbox
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -n auto --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n auto --dist loadgroup -m 'not e2e and not browser'

## sandbox: build or reuse the Debian-sid chroot with a real Asterisk (needs root)
sandbox:
	scripts/asterisk-sandbox

bench: $(STAMP)
	$(BIN)/python bench/decide.py

## wheel: build dist/callgate-*.whl (the packs, sample config and dialplan include inside);
## installs the build tools only
wheel: $(BUILD)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
