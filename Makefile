# The README's commands. Everything runs from the project's own virtual environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

# Prefect's database, logs and settings stay in the project, never in ~/.prefect.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

PORT ?= 4200

.PHONY: install run test serve stop clean

install: $(VENV)/.installed

# Rebuilt whenever the dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: install
	$(BIN)/mnist-pipeline run $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A local Prefect server (SQLite in .prefect/), the work pool, the deployments
# of prefect.yaml and one worker, on 127.0.0.1:$(PORT). Safe to run twice.
serve: install
	PORT=$(PORT) BIN=$(BIN) scripts/serve.sh start

# Ends exactly what `make serve` started, by the process groups it recorded.
stop:
	scripts/serve.sh stop

clean:
	rm -rf $(VENV) .prefect .pytest_cache
