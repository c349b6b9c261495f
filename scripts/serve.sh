#!/usr/bin/env bash
# `make serve` / `make stop`: a local Prefect server, the work pool, the deployments of
# prefect.yaml, one worker and the reports server, all on 127.0.0.1, all ended by
# `make stop` through the PID files under $PREFECT_HOME/run/.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-4200}"
# The store's reports, read-only over HTTP (ops/reports_server.py), so a run's report opens from the UI.
REPORTS_PORT="${REPORTS_PORT:-$((PORT + 1))}"
BIN="${BIN:-.venv/bin}"
POOL="local-process"

export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
RUN_DIR="$PREFECT_HOME/run"
# The PostgreSQL cluster of DB=postgres (its server, when root, runs as Debian's postgres account).
PG_DIR="${PG_DIR:-$PREFECT_HOME/postgres}"
# Offline-quiet: no telemetry from the server, the worker or its flow runs.
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
# The UI asks the API at PREFECT_SERVER_API_PORT; --port alone would leave it at 4200.
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$PORT" PREFECT_API_URL="http://127.0.0.1:$PORT/api"
# Browsers let only the UI's own pages call the API, not any page the operator has open.
export PREFECT_SERVER_CORS_ALLOWED_ORIGINS="${PREFECT_SERVER_CORS_ALLOWED_ORIGINS:-http://127.0.0.1:$PORT}"
# The deployments' pull step moves flow runs into this checkout.
export PROJECT_DIR="$PWD"
# Runs created from the UI or the API read and write only here (see docs/operations.md): the project
# (its artifact store and data/), Debian's datasets, and what MNIST_PIPELINE_ALLOWED_ROOTS adds.
export MNIST_PIPELINE_ALLOWED_ROOTS="$PWD:/usr/share/datasets${MNIST_PIPELINE_ALLOWED_ROOTS:+:$MNIST_PIPELINE_ALLOWED_ROOTS}"
# With basic auth on the server (and the reports), the CLI and the worker present the same.
[ -z "${PREFECT_SERVER_API_AUTH_STRING:-}" ] || export PREFECT_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING"
# Flow runs send heartbeats; an automation marks Crashed those whose heartbeats stop.
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
# The worker's flows link their reports there.
export MNIST_PIPELINE_REPORTS_ROOT="${MNIST_PIPELINE_REPORTS_ROOT:-$PWD/artifacts}"
export MNIST_PIPELINE_REPORTS_URL="http://127.0.0.1:$REPORTS_PORT"

# Alive, and still ours: a PID the system reused for something else does not count.
# (http.server: the reports' server of earlier versions, which `make stop` must end too.)
alive() {
  local pid
  pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && grep -qE 'prefect|reports_server|ops\.deployments|http\.server' "/proc/$pid/cmdline" 2>/dev/null
}

# Start a command in its own session, so `stop` can end it with what it starts.
launch() {
  local name=$1; shift
  setsid "$@" >"$RUN_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

wait_healthy() {
  for _ in $(seq 1 120); do
    "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "$PREFECT_API_URL/health" 2>/dev/null && return 0
    alive server || { echo "the Prefect server exited; see $RUN_DIR/server.log" >&2; exit 1; }
    sleep 1
  done
  echo "the Prefect server did not answer within 120 s; see $RUN_DIR/server.log" >&2
  exit 1
}

# DB=postgres: Prefect's server on a PostgreSQL cluster of the project's own (unless
# PREFECT_SERVER_DATABASE_CONNECTION_URL names one). REDIS=1: the stages' and the
# champion's locks in a Redis of its own (unless MNIST_PIPELINE_REDIS_URL names one).
# Their URLs hold passwords: kept in files of mode 0600, never printed.
service() {  # NAME FOLDER PORT: started, its URL kept in $RUN_DIR/NAME.url
  (umask 077; "$BIN/python" -m ops.services "$1" start "$2" "$3" >"$RUN_DIR/$1.url") || { rm -f "$RUN_DIR/$1.url"; exit 1; }
}

services() {
  if [ "${DB:-sqlite}" = postgres ] && [ -z "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ]; then
    service postgres "$PG_DIR" "${PG_PORT:-$((PORT + 2))}"
    echo "$PG_DIR" >"$RUN_DIR/postgres.dir"
  fi
  if [ "${REDIS:-0}" = 1 ] && [ -z "${MNIST_PIPELINE_REDIS_URL:-}" ]; then
    service redis "$PREFECT_HOME/redis" "${REDIS_PORT:-$((PORT + 3))}"
  fi
}

service_env() {
  [ ! -f "$RUN_DIR/postgres.url" ] || export PREFECT_SERVER_DATABASE_CONNECTION_URL=$(cat "$RUN_DIR/postgres.url")
  [ ! -f "$RUN_DIR/redis.url" ] || export MNIST_PIPELINE_REDIS_URL=$(cat "$RUN_DIR/redis.url")
}

start() {
  mkdir -p "$RUN_DIR"
  service_env
  if alive server; then
    if [ "$(cat "$RUN_DIR/server.port" 2>/dev/null)" != "$PORT" ]; then
      echo "a server from an earlier 'make serve' runs on port $(cat "$RUN_DIR/server.port" 2>/dev/null); 'make stop' first" >&2
      exit 1
    fi
    echo "server already running (pid $(cat "$RUN_DIR/server.pid"))"
  else
    services
    service_env
    # Prefect's own server, its SQLite writers waiting their turn (ops/prefect_compat.py).
    launch server "$BIN/python" -m ops.prefect_compat server start --host 127.0.0.1 --port "$PORT"
    echo "$PORT" >"$RUN_DIR/server.port"
  fi
  wait_healthy
  "$BIN/python" -m ops.deployments pool "$POOL"
  "$BIN/prefect" --no-prompt deploy --all >"$RUN_DIR/deploy.log" 2>&1 || { cat "$RUN_DIR/deploy.log" >&2; exit 1; }
  # Unknown parameters refused at creation; nightly's own parameters (MNIST_PIPELINE_NIGHTLY), checked.
  "$BIN/python" -m ops.deployments configure
  alive worker && echo "worker already running (pid $(cat "$RUN_DIR/worker.pid"))" \
    || launch worker "$BIN/prefect" worker start --pool "$POOL" --limit 1
  alive tidy || launch tidy "$BIN/python" -m ops.deployments tidy  # a crashed run's task runs: Crashed too
  alive reports || launch reports "$BIN/python" -m uvicorn --factory ops.reports_server:from_environment \
    --host 127.0.0.1 --port "$REPORTS_PORT"
  why=$("$BIN/python" -m ops.services process listening reports "$(cat "$RUN_DIR/reports.pid")" "$REPORTS_PORT" 2>&1) \
    || { echo "${why#process: }; see $RUN_DIR/reports.log" >&2; exit 1; }
  # For command-line runs that report to this server (ops/temporary_server.py), with the same locks as the
  # worker's runs, or two runs could build one entry at once.
  (umask 077
   { echo "MNIST_PIPELINE_REPORTS_URL=$MNIST_PIPELINE_REPORTS_URL"; echo "MNIST_PIPELINE_REPORTS_ROOT=$MNIST_PIPELINE_REPORTS_ROOT"
     [ -z "${MNIST_PIPELINE_REDIS_URL:-}" ] || echo "MNIST_PIPELINE_REDIS_URL=$MNIST_PIPELINE_REDIS_URL"; } >"$RUN_DIR/reports.env")
  echo "Prefect UI: http://127.0.0.1:$PORT"
  echo "Reports: $MNIST_PIPELINE_REPORTS_URL/runs/<flow run id>/report.html (the store's reports only, read-only)"
  roots=${MNIST_PIPELINE_ALLOWED_ROOTS//:/, }
  echo "Runs from the UI read mirrors and keep artifact stores only under: ${roots//s3, \/\//s3://}"
  echo "  (add folders with MNIST_PIPELINE_ALLOWED_ROOTS=/one:/two make serve, after make stop)"
  [ -z "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ] || echo "Database: ${PREFECT_SERVER_DATABASE_CONNECTION_URL%%://*}://...@${PREFECT_SERVER_DATABASE_CONNECTION_URL##*@}"
  echo "For the CLI: export PREFECT_API_URL=$PREFECT_API_URL${MNIST_PIPELINE_REDIS_URL:+ (the Redis URL for locks is in $RUN_DIR/reports.env, mode 0600)}"
}

stop() {
  local name pid port
  if alive server && alive worker && port=$(cat "$RUN_DIR/server.port" 2>/dev/null); then
    # Flow runs in flight end as Cancelled in the UI, not Crashed.
    PREFECT_API_URL="http://127.0.0.1:$port/api" "$BIN/python" -m ops.deployments cancel "$POOL" \
      || echo "could not cancel the flow runs in flight through the API; they will show as crashed" >&2
  fi
  for name in tidy worker reports server; do
    pid=$(cat "$RUN_DIR/$name.pid" 2>/dev/null) || continue
    "$BIN/python" -m ops.services process stop "$name" "$pid"
    rm -f "$RUN_DIR/$name.pid"
  done
  rm -f "$RUN_DIR/server.port" "$RUN_DIR/reports.env"
  [ ! -f "$RUN_DIR/redis.url" ] || { "$BIN/python" -m ops.services redis stop "$PREFECT_HOME/redis" && echo "stopped redis"; }
  [ ! -f "$RUN_DIR/postgres.url" ] || { "$BIN/python" -m ops.services postgres stop \
    "$(cat "$RUN_DIR/postgres.dir" 2>/dev/null || echo "$PG_DIR")" && echo "stopped postgres"; }
  rm -f "$RUN_DIR/redis.url" "$RUN_DIR/postgres.url" "$RUN_DIR/postgres.dir"
}

case "${1:-}" in
  start|stop) "$1" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
