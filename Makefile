# Every target installs what it needs first: a fresh clone runs `make demo` or `make test` directly.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench lint clean

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH bash launch/demo.sh

# Test files are shared out to TEST_WORKERS processes, each file whole (its module fixtures are built once). Two
# suit 2 cores: most tests use one core, and the 2-rank ones wait on each other's messages part of the time.
TEST_WORKERS ?= 2

test: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-fast: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

bench: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m benchmarks.run_all

lint: install
	$(VENV)/bin/ruff check jala_ds kernels benchmarks tests

clean:
	rm -rf demo_out runs mlflow.db .pytest_cache
