# The two commands a new user needs: `make run` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint format bench bench-peers system clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

system:
	@bash devstack/install-system-deps.sh

run: $(STAMP) system
	@[ -n "$$KAFKA_BOOTSTRAP_SERVERS" ] || $(BIN)/inboxflow dev fetch
	$(BIN)/inboxflow run

test: $(STAMP) system lint
	@[ -n "$$KAFKA_BOOTSTRAP_SERVERS" ] || $(BIN)/inboxflow dev fetch
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) system
	$(BIN)/pytest -m benchmark -s tests/benchmarks

# The Quix Streams peer of `inboxflow bench pipeline` lives in a venv of its own: quixstreams caps
# pydantic below the version pinned here.
QUIX_VENV ?= $(HOME)/.cache/inboxflow/bench-quix-venv
bench-peers:
	$(PYTHON) -m venv $(QUIX_VENV)
	grep -iv '^pydantic' constraints.txt > $(QUIX_VENV)/constraints.txt
	$(QUIX_VENV)/bin/pip install -q -c $(QUIX_VENV)/constraints.txt -e '.[bench-quix]'

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
