# make quickstart: install, then run the whole pipeline offline on digits (teacher -> kdrefine
#                  student -> convert -> validate both forms), printing a results table.
# make test:       install (with pytest), then run the whole test suite.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test quickstart test test-fast lint

install:
	$(PIP) install -q -r requirements.txt

install-test:
	$(PIP) install -q -r requirements-test.txt

quickstart: install
	$(PYTHON) scripts/quickstart.py

test: install-test
	$(PYTHON) -m pytest -q tests

test-fast: install-test
	$(PYTHON) -m pytest -q -m "not slow" tests

lint: install-test
	$(PYTHON) -m ruff check .
