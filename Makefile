# `make test` and `make demo` work on a fresh machine: they create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CODE := src tests benchmarks scripts

.PHONY: test test-quick demo lint format install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

# everything but the slow, browser and distributed tests (`make test`, and CI, run them all)
test-quick: install
	$(PY) -m pytest -m "not slow and not browser and not distributed"

demo: install
	$(PY) -m ueo demo --out demo-out --overwrite

lint: install
	$(PY) -m ruff check $(CODE)
	$(PY) -m ruff format --check $(CODE)
	$(PY) -m mypy

format: install
	$(PY) -m ruff check --fix $(CODE)
	$(PY) -m ruff format $(CODE)

clean:
	rm -rf $(VENV) demo-out .pytest_cache
