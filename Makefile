# make quickstart: install, then run the whole pipeline offline on digits (teacher -> kdrefine
#                  student -> convert -> validate both forms), printing a results table.
# make test:       install (with pytest), then run the whole test suite (make test-grid: every
#                  method on every pair of the KDrefine table).
# PYTHON=.venv/bin/python (or any interpreter): install into and run with that one (.ci/run does).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test quickstart test test-fast test-grid lint

install:
	$(PIP) install -q -r requirements.txt

install-test:
	$(PIP) install -q -r requirements-test.txt

quickstart: install
	$(PYTHON) scripts/quickstart.py

# Two workers, one file each at a time (the machine's two cores), one OpenMP thread per process.
PYTEST = OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --dist loadfile

test: install-test
	$(PYTEST) tests

test-fast: install-test
	$(PYTEST) -m "not slow" tests

test-grid: install-test
	$(PYTEST) -m grid tests/test_grid.py

lint: install-test
	$(PYTHON) -m ruff check .
