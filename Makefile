# Two commands: `make demo` and `make test`. Each creates .venv if missing, installs the locked
# dependencies (requirements/dev.txt, every version and hash pinned) and the project (editable,
# no dependency resolution), then runs. `make lock` refreshes the pins (see requirements/README.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-slow test-cluster lint bench clean lock

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements/dev.txt
	$(BIN)/pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Re-resolve every pin from pyproject.toml (newest releases that satisfy it), for the dev/CPU
# set and for the cluster's GPU set, both with the `cloud` extra (gs:// / s3:// data and
# MLflow artifacts: a driver on a workstation runs the data pre-flight too); review the diff,
# run `make test`, commit both files.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header --quiet
lock: $(BIN)/python
	$(BIN)/pip install -q uv
	$(UV_COMPILE) --extra dev --extra cloud -o requirements/dev.txt
	$(UV_COMPILE) --extra gpu --extra cloud -o requirements/gpu.txt

demo: $(STAMP)
	$(BIN)/symsweep run sweeps/fig2.py --preset smoke

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# multi-node Ray cluster on loopback (three `ray start` nodes, one killed mid-sweep); ~2 min
test-cluster: $(STAMP)
	SYMSWEEP_TEST_CLUSTER=1 $(BIN)/python -m pytest -q -rA -m cluster tests/test_cluster_loopback.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) .pytest_cache
