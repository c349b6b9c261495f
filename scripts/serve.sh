#!/usr/bin/env bash
# `make serve` / `make stop`: a local Prefect server, the work pool, the
# deployments of prefect.yaml and one worker, all on 127.0.0.1, all ended by
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
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Prefect's client-side telemetry, in the worker and its flow runs.
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
export PREFECT_SERVER_API_HOST=127.0.0.1
# The UI asks the API at this port; --port alone would leave it at 4200.
export PREFECT_SERVER_API_PORT="$PORT"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
# Browsers let only the UI's own pages call the API, not any page the operator has open.
export PREFECT_SERVER_CORS_ALLOWED_ORIGINS="${PREFECT_SERVER_CORS_ALLOWED_ORIGINS:-http://127.0.0.1:$PORT}"
# The deployments' pull step moves flow runs into this checkout.
export PROJECT_DIR="$PWD"
# Runs created from the UI or the API read and write only here (see README): the
# project (its artifact store and data/), Debian's datasets, and the folders the
# user adds in MNIST_PIPELINE_ALLOWED_ROOTS.
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
  kill -0 "$pid" 2>/dev/null && grep -qE 'prefect|reports_server|http\.server' "/proc/$pid/cmdline" 2>/dev/null
}

# Start a command in its own process group, so `stop` can end it with its children.
launch() {
  local name=$1; shift
  setsid "$@" >"$RUN_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

wait_healthy() {
  for _ in $(seq 1 120); do
    if "$BIN/python" - "$PREFECT_API_URL/health" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).read().strip() == b"true" else 1)
PY
    alive server || { echo "the Prefect server exited; see $RUN_DIR/server.log" >&2; exit 1; }
    sleep 1
  done
  echo "the Prefect server did not answer within 120 s; see $RUN_DIR/server.log" >&2
  exit 1
}

# DB=postgres: Prefect's server on a PostgreSQL cluster of the project's own in
# $PREFECT_HOME/postgres (unless PREFECT_SERVER_DATABASE_CONNECTION_URL names one).
# REDIS=1: the stages' and the champion's locks in a Redis of its own (unless
# MNIST_PIPELINE_REDIS_URL names one), for workers on several hosts.
services() {
  local url
  if [ "${DB:-sqlite}" = postgres ] && [ -z "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ]; then
    url=$("$BIN/python" -m ops.services postgres start "$PG_DIR" "${PG_PORT:-$((PORT + 2))}") || exit 1
    (umask 077; echo "$url" >"$RUN_DIR/postgres.url")  # it holds the password
    echo "$PG_DIR" >"$RUN_DIR/postgres.dir"
  fi
  if [ "${REDIS:-0}" = 1 ] && [ -z "${MNIST_PIPELINE_REDIS_URL:-}" ]; then
    url=$("$BIN/python" -m ops.services redis start "$PREFECT_HOME/redis" "${REDIS_PORT:-$((PORT + 3))}") || exit 1
    (umask 077; echo "$url" >"$RUN_DIR/redis.url")
  fi
}

# The services' URLs, for the server and the worker this start launches.
service_env() {
  if [ -f "$RUN_DIR/postgres.url" ]; then
    export PREFECT_SERVER_DATABASE_CONNECTION_URL=$(cat "$RUN_DIR/postgres.url")
  fi
  if [ -f "$RUN_DIR/redis.url" ]; then
    export MNIST_PIPELINE_REDIS_URL=$(cat "$RUN_DIR/redis.url")
  fi
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
  "$BIN/prefect" --no-prompt deploy --all >"$RUN_DIR/deploy.log" 2>&1 \
    || { cat "$RUN_DIR/deploy.log" >&2; exit 1; }
  # Unknown parameters refused at creation; nightly's own parameters (MNIST_PIPELINE_NIGHTLY), checked.
  "$BIN/python" -m ops.deployments configure
  if alive worker; then
    echo "worker already running (pid $(cat "$RUN_DIR/worker.pid"))"
  else
    launch worker "$BIN/prefect" worker start --pool "$POOL" --limit 1
  fi
  if ! alive reports; then
    launch reports "$BIN/python" -m uvicorn --factory ops.reports_server:from_environment --host 127.0.0.1 --port "$REPORTS_PORT"
  fi
  # For command-line runs that report to this server (ops/temporary_server.py).
  printf 'MNIST_PIPELINE_REPORTS_URL=%s\nMNIST_PIPELINE_REPORTS_ROOT=%s\n' \
    "$MNIST_PIPELINE_REPORTS_URL" "$MNIST_PIPELINE_REPORTS_ROOT" >"$RUN_DIR/reports.env"
  # The same locks as the worker's runs, or two runs could build one entry at once.
  if [ -n "${MNIST_PIPELINE_REDIS_URL:-}" ]; then
    chmod 600 "$RUN_DIR/reports.env"  # the URL holds Redis's password
    echo "MNIST_PIPELINE_REDIS_URL=$MNIST_PIPELINE_REDIS_URL" >>"$RUN_DIR/reports.env"
  fi
  echo "Prefect UI: http://127.0.0.1:$PORT"
  echo "Reports: $MNIST_PIPELINE_REPORTS_URL/runs/<flow run id>/report.html (the store's reports only, read-only)"
  roots=${MNIST_PIPELINE_ALLOWED_ROOTS//:/, }
  echo "Runs from the UI read mirrors and keep artifact stores only under: ${roots//s3, \/\//s3://}"
  echo "  (add folders with MNIST_PIPELINE_ALLOWED_ROOTS=/one:/two make serve, after make stop)"
  [ -z "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ] || echo "Database: ${PREFECT_SERVER_DATABASE_CONNECTION_URL%%://*}://...@${PREFECT_SERVER_DATABASE_CONNECTION_URL##*@}"
  echo "For the CLI: export PREFECT_API_URL=$PREFECT_API_URL${MNIST_PIPELINE_REDIS_URL:+ MNIST_PIPELINE_REDIS_URL=$MNIST_PIPELINE_REDIS_URL}"
}

# Every process as "pid ppid pgrp state", read from /proc (procps may be absent).
# Always succeeds: a process that ends while it is read is left out.
processes() {
  local f line pid
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    pid=${f#/proc/}; pid=${pid%/stat}
    line=${line##*) }  # after the command name, which may hold spaces: state ppid pgrp ...
    set -- $line
    if (($# >= 3)); then echo "$pid $2 $3 $1"; fi
  done
  return 0
}

# Process groups to end for the process $1: its own, and those of every process
# descended from it. Prefect starts each flow run in a session of its own, so
# the worker's group alone would leave a running flow run behind.
process_groups() {
  local root=$1 pid ppid pgrp state cur
  local -A parent=() group=() seen=()
  while read -r pid ppid pgrp state; do parent[$pid]=$ppid; group[$pid]=$pgrp; done < <(processes)
  local -a todo=("$root")
  seen[$root]=1
  while ((${#todo[@]})); do
    cur=${todo[0]}; todo=("${todo[@]:1}")
    for pid in "${!parent[@]}"; do
      if [ "${parent[$pid]}" = "$cur" ]; then todo+=("$pid"); seen[${group[$pid]}]=1; fi
    done
  done
  echo "${!seen[@]}"
}

# Those of the process groups $@ that still have a member that has not ended
# (a zombie only waits for its parent to read its exit status).
living() {
  local g pid ppid pgrp state
  local -A wanted=() found=()
  for g in "$@"; do wanted[$g]=1; done
  while read -r pid ppid pgrp state; do
    if [ -n "${wanted[$pgrp]:-}" ] && [ "$state" != Z ]; then found[$pgrp]=1; fi
  done < <(processes)
  echo "${!found[@]}"
}

stop() {
  local name pid i groups live port
  if alive server && alive worker && port=$(cat "$RUN_DIR/server.port" 2>/dev/null); then
    # Flow runs in flight end as Cancelled in the UI, not Crashed.
    PREFECT_API_URL="http://127.0.0.1:$port/api" "$BIN/python" -m ops.deployments cancel \
      || echo "could not cancel the flow runs in flight through the API; they will show as crashed" >&2
  fi
  for name in worker reports server; do
    pid=$(cat "$RUN_DIR/$name.pid" 2>/dev/null) || continue
    if alive "$name"; then
      groups=$(process_groups "$pid")
    elif kill -0 -- "-$pid" 2>/dev/null; then
      # Its leader died and left its group behind. (Flow runs it had started now
      # belong to init, out of reach of this search.)
      groups=$pid
    else
      groups=""
    fi
    if [ -n "$groups" ]; then
      for i in $groups; do kill -TERM -- "-$i" 2>/dev/null || true; done
      for i in $(seq 1 30); do
        live=$(living $groups)
        [ -n "$live" ] || break
        # Prefect's worker turns SIGTERM into a graceful shutdown that can hang
        # when it is idle. Once its flow runs have ended, nothing is lost by not
        # waiting for it longer than 2 s.
        if [ "$name" = worker ] && [ "$i" -ge 5 ] && [ "$live" = "$pid" ]; then break; fi
        sleep 0.5
      done
      live=$(living $groups)
      for i in $live; do kill -KILL -- "-$i" 2>/dev/null || true; done
      if [ -z "$live" ]; then
        echo "stopped $name (pid $pid)"
      elif [ "$live" = "$pid" ] && [ "$name" = worker ]; then
        echo "stopped $name (pid $pid; idle, killed after SIGTERM)"
      else
        echo "killed $name (pid $pid) and what it started: still running 15 s after SIGTERM"
      fi
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  rm -f "$RUN_DIR/server.port" "$RUN_DIR/reports.env"
  if [ -f "$RUN_DIR/redis.url" ]; then
    "$BIN/python" -m ops.services redis stop "$PREFECT_HOME/redis" && echo "stopped redis"
    rm -f "$RUN_DIR/redis.url"
  fi
  if [ -f "$RUN_DIR/postgres.url" ]; then
    "$BIN/python" -m ops.services postgres stop "$(cat "$RUN_DIR/postgres.dir" 2>/dev/null || echo "$PG_DIR")" \
      && echo "stopped postgres"
    rm -f "$RUN_DIR/postgres.url" "$RUN_DIR/postgres.dir"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
