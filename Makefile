# greenprof developer tasks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean

# (Re)install when the project definition changes; the editable install tracks source edits.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=68" wheel
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# The main job on the built-in default: which sensors exist here, then measure the two smallest
# SmolLM shapes (built once into the cache), print the per-token table and write the dashboard.
demo: $(STAMP)
	$(VENV)/bin/greenprof sensors
	$(VENV)/bin/greenprof measure --runs 3 --warmup 1 --new-tokens 64 --prompt-tokens 128
	$(VENV)/bin/greenprof dashboard -o greenprof-report.html

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PIP) install --quiet -e '.[test,bench]'
	$(PY) benchmarks/meter_overhead.py
	$(PY) benchmarks/store_speed.py
	$(PY) benchmarks/dashboard_speed.py
	$(PY) benchmarks/runner_speed.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
