# Conveyor's two front doors: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
BIN := .venv/bin

.PHONY: bootstrap run test lint pytest migrate db-start db-stop db-status clean-db

bootstrap:  ## install the PostgreSQL server packages (as root) and the locked virtualenv
	@bash scripts/bootstrap.sh

run: bootstrap  ## embedded PostgreSQL + migrate + demo workflows + the runner (Ctrl-C stops)
	@$(BIN)/conveyor db start
	@$(BIN)/conveyor migrate
	@$(BIN)/conveyor demo run $(DEMO_ARGS)

test: bootstrap lint pytest  ## the whole test suite and every linter

lint: bootstrap
	$(BIN)/ruff check runner tests bench
	$(BIN)/ruff format --check runner tests bench
	$(BIN)/mypy
	$(BIN)/sqlfluff lint sql migrations

pytest: bootstrap
	$(BIN)/pytest $(PYTEST_ARGS)

migrate: bootstrap
	$(BIN)/conveyor migrate

db-start: bootstrap
	$(BIN)/conveyor db start

db-stop: bootstrap
	$(BIN)/conveyor db stop

db-status: bootstrap
	$(BIN)/conveyor db status

clean-db: bootstrap  ## stop the embedded cluster and delete its data
	-$(BIN)/conveyor db stop
	rm -rf .conveyor/pg

bench-dispatch: bootstrap  ## dispatch + interpretation throughput, matching cost (bench/RESULTS.md)
	$(BIN)/python -m bench.dispatch_throughput

bench-capture: bootstrap  ## capture overhead: watched vs plain table inserts (bench/RESULTS.md)
	$(BIN)/python bench/capture_overhead.py
