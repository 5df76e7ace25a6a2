# Conveyor's two front doors: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
BIN := .venv/bin

.PHONY: bootstrap run test lint pytest migrate schema db-start db-stop db-status clean-db \
	bench bench-capture bench-dispatch bench-runner bench-http-client bench-waiting bench-wait-races bench-delays bench-campaign bench-burst bench-floor bench-queue bench-serve bench-e2e bench-fanout bench-noisy-neighbour bench-ab bench-notification-stream chaos console-screenshots

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

console-screenshots: bootstrap  ## docs/console-*.png from the console's browser test (docs/console.md)
	CONVEYOR_CONSOLE_SCREENSHOTS=docs $(BIN)/pytest -q tests/e2e/test_console_browser.py tests/e2e/test_console_campaigns.py

migrate: bootstrap
	$(BIN)/conveyor migrate

schema: bootstrap  ## schema/conveyor.sql from a fresh install in a throwaway cluster: commit it with any schema change
	$(BIN)/python -m conveyor.schema_snapshot

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

bench-burst: bootstrap  ## 1,000 events at once through real runners: drain time, queue depth over time (bench/RESULTS.md)
	$(BIN)/python -m bench.burst_drain

bench-delays: bootstrap  ## 1,000 delays due in the same second: lateness p50/p99/max with a real runner (bench/RESULTS.md)
	$(BIN)/python -m bench.delay_lateness

bench-campaign: bootstrap  ## campaign sends of 100,000 enrollments due at once: rate, window, lateness (bench/RESULTS.md)
	$(BIN)/python -m bench.campaign_due

bench-waiting: bootstrap  ## due-scan and dispatch cost with 100,000 waiting executions vs none (bench/RESULTS.md)
	$(BIN)/python -m bench.waiting_scale

bench-wait-races: bootstrap  ## waits for events under racing dispatchers and ticks, thousands of trials: 0 lost (bench/RESULTS.md)
	$(BIN)/python -m bench.wait_races

chaos: bootstrap  ## chaos at full scale: kills, restarts, terminations, outages, schedule race (bench/RESULTS.md)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

bench-runner: bootstrap  ## one runner's action throughput, concurrency 16 vs 1 (bench/RESULTS.md)
	$(BIN)/python -m bench.runner_throughput --actions 400

bench-queue: bootstrap  ## read_actions and write_back A/B against the same functions of BASELINE (default main) (bench/RESULTS.md)
	$(BIN)/python -m bench.queue_hot_path --baseline $(or $(BASELINE),main) --record

bench-serve: bootstrap  ## webhook ingest through conveyor serve: requests/s and CPU per request vs BASELINE (default main) (bench/RESULTS.md)
	$(BIN)/python -m bench.serve_ingest --baseline $(or $(BASELINE),main) --record

bench-notification-stream: bootstrap  ## 1,000 SSE clients on one conveyor serve: commit→client latency p50/p99, nothing lost, CPU per notification vs 10 clients (bench/RESULTS.md)
	$(BIN)/python -m bench.notification_stream --record

bench-ab: bootstrap  ## interleaved A/B of git revisions (REVS="HEAD~1 HEAD"; WORKTREE = uncommitted): e2e burst + dispatch, medians and ratios
	$(BIN)/python -m bench.ab_revisions $(REVS)

bench-http-client: bootstrap  ## the runner's HTTP client: CPU per request vs the hand-parsed client it replaced (bench/RESULTS.md)
	$(BIN)/python -m bench.http_client_cpu

bench-fanout: bootstrap  ## a for_each of 1,000 webhooks vs 1,000 executions; join cost per child, 100 vs 10,000 children (bench/RESULTS.md)
	$(BIN)/python -m bench.fanout $(BENCH_ARGS)

bench-noisy-neighbour: bootstrap  ## tenant A's 50,000-event burst vs tenant B's 20 events/s: B's latency p50/p99 and A's throughput, each against alone (bench/RESULTS.md)
	$(BIN)/python -m bench.noisy_neighbour $(BENCH_ARGS)

bench-floor: bootstrap  ## PostgreSQL CPU per workflow: the engine vs the same rows written by plain statements (bench/RESULTS.md)
	$(BIN)/python -m bench.row_floor

bench: bench-capture bench-dispatch bench-runner bench-http-client bench-waiting bench-wait-races bench-delays bench-burst bench-floor bench-e2e bench-fanout bench-noisy-neighbour chaos  ## every benchmark and the chaos runs, one after another: every number in bench/RESULTS.md

bench-e2e:  ## end to end vs DBOS and Procrastinate: burst + steady rate (bench/RESULTS.md, bench/e2e_peers.png)
	@CONVEYOR_BENCH=1 bash scripts/bootstrap.sh
	$(BIN)/python -m bench.e2e_peers $(BENCH_ARGS)
