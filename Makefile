# The two commands of the README's quick start, and a few more for developers.
#   make demo   set up, then run the bridge against a throwaway local Synapse (SQLite)
#   make test   set up, then run the linters and the whole test suite

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed lint
	scripts/ensure-postgres.sh
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/transactions.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
