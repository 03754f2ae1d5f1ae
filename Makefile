# Two commands: `make demo` and `make test`. Each creates .venv if missing and installs the
# project into it (editable), then runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-slow test-cluster lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/symsweep run sweeps/fig2.py --preset smoke

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# multi-node Ray cluster on loopback (three `ray start` nodes, one killed mid-sweep); ~2 min
test-cluster: $(STAMP)
	SYMSWEEP_TEST_CLUSTER=1 $(BIN)/python -m pytest -q -rA -m cluster tests/test_cluster_loopback.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) .pytest_cache
