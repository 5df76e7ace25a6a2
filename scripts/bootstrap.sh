#!/usr/bin/env bash
# Installs what Conveyor needs on a Debian machine, idempotently:
#   * the PostgreSQL server (15 or newer) with pg_cron and plpgsql_check, through apt when root;
#   * Debian's chromium, for the real-browser test (Playwright drives it; nothing is downloaded);
#   * a virtual environment (.venv) with the locked Python dependencies (requirements.lock);
#   * with CONVEYOR_BENCH=1 (or --bench), also the benchmark-only ones (requirements-bench.lock).
# A second run with nothing to do finishes in well under a second.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${CONVEYOR_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- PostgreSQL server, pg_cron, plpgsql_check ------------------------------------
# The newest installed server major version, if any (Debian puts servers under /usr/lib/postgresql/NN).
pg_major() {
  local best=""
  for bin in /usr/lib/postgresql/*/bin/postgres; do
    [ -x "$bin" ] || continue
    local v; v="$(basename "$(dirname "$(dirname "$bin")")")"
    if [ -z "$best" ] || [ "$v" -gt "$best" ]; then best="$v"; fi
  done
  printf '%s' "$best"
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

major="$(pg_major)"
missing=()
if [ -z "$major" ] || [ "$major" -lt 15 ]; then
  missing+=(postgresql)
  major=""
fi
if [ -n "$major" ]; then
  have_pkg "postgresql-$major-cron" || missing+=("postgresql-$major-cron")
  have_pkg "postgresql-$major-plpgsql-check" || missing+=("postgresql-$major-plpgsql-check")
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]}"
    say "install them as root, for example:"
    say "  sudo apt-get update && sudo apt-get install -y postgresql postgresql-15-cron postgresql-15-plpgsql-check"
    say "(use the major version of your PostgreSQL server, 15 or newer, in the package names)"
    exit 1
  fi
  say "installing ${missing[*]} through apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ -z "$major" ]; then
    apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
    major="$(pg_major)"
    [ -n "$major" ] && [ "$major" -ge 15 ] || { say "apt installed no PostgreSQL 15 or newer"; exit 1; }
  fi
  apt-get install -y -qq --no-install-recommends \
    "postgresql-$major-cron" "postgresql-$major-plpgsql-check" >/dev/null
  # Debian's package starts a default cluster on 5432; Conveyor uses its own private clusters.
fi

# --- Chromium, for the real-browser test ------------------------------------------
# tests/e2e/test_notification_stream_browser.py drives Debian's chromium with Playwright
# (executable_path=/usr/bin/chromium); `playwright install` is never run.
if ! have_pkg chromium; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian package: chromium (the browser test needs it): sudo apt-get install -y chromium"
    exit 1
  fi
  say "installing chromium through apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# --- Python virtual environment -------------------------------------------------
lock_hash="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
stamp="$venv/.conveyor-lock-$lock_hash"
if [ ! -f "$stamp" ]; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Python 3.11 or newer is required (found: $("$python" --version 2>&1 || echo none))"
    exit 1
  fi
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
      say "installing python3-venv through apt"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      say "the Python venv module is missing: sudo apt-get install -y python3-venv"
      exit 1
    fi
  fi
  say "creating $venv with the locked dependencies (requirements.lock)"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f "$venv"/.conveyor-lock-*
  touch "$stamp"
fi

# --- Benchmark-only dependencies (CONVEYOR_BENCH=1 or --bench) --------------------
# requirements-bench.lock (uv pip compile --extra dev --extra bench): the test lock plus
# the peers bench/e2e_peers.py compares against (DBOS, Procrastinate) and matplotlib, at
# the same versions for every package the two locks share. `make test` and `make run`
# never need it.
if [ "${CONVEYOR_BENCH:-0}" = "1" ] || [ "${1:-}" = "--bench" ]; then
  bench_hash="$(sha256sum requirements.lock requirements-bench.lock pyproject.toml | sha256sum | cut -c1-16)"
  bench_stamp="$venv/.conveyor-bench-lock-$bench_hash"
  if [ ! -f "$bench_stamp" ]; then
    say "installing the benchmark dependencies (requirements-bench.lock)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r requirements-bench.lock
    rm -f "$venv"/.conveyor-bench-lock-*
    touch "$bench_stamp"
  fi
fi
