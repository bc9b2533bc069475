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

# The question on the built-in default: which sensors exist here, then the model-size ladder on
# the SmolLM shapes that fit this machine (built once into the cache; runs already stored with the
# same settings are reused): the measured table, the J/token vs size fit, the seed shapes
# extrapolated and GPT-4o mini beside them; then the dashboard.
demo: $(STAMP)
	$(VENV)/bin/greenprof sensors
	$(VENV)/bin/greenprof ladder --runs 3 --warmup 1 --new-tokens 64 --prompt-tokens 128
	$(VENV)/bin/greenprof dashboard -o greenprof-report.html

test: $(STAMP)
	$(PY) -m pytest

# Measured results: meter_overhead, startup_speed and runner_speed also write them, dated and with
# the machine, to benchmarks/results/ (--save).
bench: $(STAMP)
	$(PIP) install --quiet -e '.[test,bench]'
	$(PY) benchmarks/meter_overhead.py --save
	$(PY) benchmarks/startup_speed.py --save
	$(PY) benchmarks/store_speed.py
	$(PY) benchmarks/dashboard_speed.py
	$(PY) benchmarks/runner_speed.py --save
	$(PY) benchmarks/serve_speed.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
