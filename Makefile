# Each target bootstraps its own .venv from pyproject.toml; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-peers clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "turret needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres,redis,metrics,tracing]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy src

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Peers for bench/bench_postgres.py (procrastinate, pgqueuer) and bench/bench_redis.py
# (arq, SAQ, streaq, taskiq, dramatiq) in their own venv, never
# in the project's dependencies (issue 6).
bench-peers: $(STAMP)
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -e . 'psycopg[binary]' psycopg-pool procrastinate pgqueuer asyncpg
	# Redis peers for bench/bench_redis.py (issue 7)
	.venv-bench/bin/python -m pip install -q arq saq streaq taskiq taskiq-redis dramatiq redis
	$(BIN)/python bench/bench_postgres.py
	$(BIN)/python bench/bench_redis.py

clean:
	rm -rf $(VENV) build *.egg-info
