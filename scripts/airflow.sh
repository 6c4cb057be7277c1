#!/usr/bin/env bash
# make airflow: a local Airflow 3 UI with the example DAGs, the OpenAI Batch emulator, and an `openai_default`
# connection that points at it. Ctrl-C (or SIGTERM) stops every process this script started.
#
# Components: api-server, scheduler (LocalExecutor), dag-processor and triggerer, plus the emulator, each started
# with setsid in a process group of its own (so Ctrl-C reaches only this script, which then stops them all).
# State (SQLite DB, logs, passwords) lives in AIRFLOW_UI_HOME (default .airflow/ui).
#
# Settings (environment):
#   AIRFLOW_PORT                 api-server / UI port on 127.0.0.1 (default 8080)
#   EMULATOR_PORT                emulator port (default: a free port)
#   EMULATOR_PHASE_SECONDS       seconds per batch phase in the emulator (default 2)
#   OPENAI_BATCH_POLL_INTERVAL   how often the example DAG's sensor polls (default 2 seconds)
#   AIRFLOW_UI_HOME              AIRFLOW_HOME of this instance (default .airflow/ui)
#   AIRFLOW_UI_FRESH=1           start from an empty database
#   AIRFLOW_ADMIN_PASSWORD       password of the `admin` user (default admin)
#   AIRFLOW_VIEWER_PASSWORD      password of the `viewer` user, who may read but not edit DAGs (default viewer)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
export PATH="$VENV/bin:$PATH"

AIRFLOW_PORT=${AIRFLOW_PORT:-8080}
HOST=127.0.0.1
URL="http://$HOST:$AIRFLOW_PORT"
ADMIN_PASSWORD=${AIRFLOW_ADMIN_PASSWORD:-admin}
VIEWER_PASSWORD=${AIRFLOW_VIEWER_PASSWORD:-viewer}
export AIRFLOW_HOME=${AIRFLOW_UI_HOME:-$ROOT/.airflow/ui}
case $AIRFLOW_HOME in /*) ;; *) AIRFLOW_HOME=$ROOT/$AIRFLOW_HOME ;; esac
mkdir -p "$AIRFLOW_HOME"
if [[ ${AIRFLOW_UI_FRESH:-0} == 1 ]]; then
  rm -rf "$AIRFLOW_HOME/airflow.db" "$AIRFLOW_HOME/logs"
fi

# Every process started from here carries this tag, so the final sweep finds them all (by pid), including
# task processes that Airflow moves into process groups of their own.
TAG="$$-$(date +%s%N)"
export OPENAI_BATCH_AIRFLOW_UI_TAG=$TAG

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
if port_busy "$AIRFLOW_PORT"; then
  echo "Port $AIRFLOW_PORT on $HOST is already in use: stop what runs there or set AIRFLOW_PORT." >&2
  exit 1
fi
EMULATOR_PORT=${EMULATOR_PORT:-$($PY -c "from openai_batch_emulator.server import free_port; print(free_port())")}

# --- Airflow configuration: everything through the environment, inherited by every component
unset AIRFLOW_CONN_OPENAI_DEFAULT # would take precedence over the emulator connection stored below
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/example_dags
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-4}
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__TEST_CONNECTION=Enabled
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
# viewer: the role that may read DAGs but not edit them, nor read connections (the batches page shows it no batch).
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin,viewer:viewer
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$AIRFLOW_HOME/simple_auth_manager_passwords.json
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$URL/execution/
export AIRFLOW__API__HOST=$HOST
export AIRFLOW__API__PORT=$AIRFLOW_PORT
export AIRFLOW__API__WORKERS=1
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
export OPENAI_BATCH_POLL_INTERVAL=${OPENAI_BATCH_POLL_INTERVAL:-2}
printf '{"admin": "%s", "viewer": "%s"}\n' "$ADMIN_PASSWORD" "$VIEWER_PASSWORD" \
  >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"

declare -A PIDS=()
tagged_pids() { # pids of every live process carrying our tag (pure bash: starts no tagged helper process)
  local f pid var
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" ]] && continue
    while IFS= read -r -d '' var || [[ -n $var ]]; do
      if [[ $var == "OPENAI_BATCH_AIRFLOW_UI_TAG=$TAG" ]]; then
        echo "$pid"
        break
      fi
    done 2>/dev/null <"$f" || true
  done
}

STOPPING=0
stop_all() {
  [[ $STOPPING == 1 ]] && return
  STOPPING=1
  trap '' INT TERM
  echo
  echo "Stopping Airflow and the emulator..."
  local name pid left
  for name in "${!PIDS[@]}"; do
    pid=${PIDS[$name]}
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 150); do # up to 15 s for a graceful shutdown
    left=$(tagged_pids)
    [[ -z $left ]] && break
    sleep 0.1
  done
  left=$(tagged_pids)
  if [[ -n $left ]]; then
    echo "Killing leftover processes: $(echo $left)"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  echo "Stopped."
}
on_signal() {
  stop_all
  exit 130
}
trap on_signal INT TERM
trap stop_all EXIT

start() { # start NAME COMMAND...: a background child in a session of its own, output to NAME.log
  local name=$1
  shift
  setsid "$@" >"$AIRFLOW_HOME/$name.log" 2>&1 </dev/null &
  PIDS[$name]=$!
}

# --- the emulator, first: it starts in a second
start emulator "$PY" -m openai_batch_emulator --host "$HOST" --port "$EMULATOR_PORT" \
  --phase-seconds "${EMULATOR_PHASE_SECONDS:-2}"

echo "Preparing the Airflow database in $AIRFLOW_HOME ..."
if ! airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1; then
  tail -n 40 "$AIRFLOW_HOME/db-migrate.log" >&2
  echo "airflow db migrate failed; full log: $AIRFLOW_HOME/db-migrate.log" >&2
  exit 1
fi

for _ in $(seq 100); do
  curl -sf "http://$HOST:$EMULATOR_PORT/_emulator/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$HOST:$EMULATOR_PORT/_emulator/health" >/dev/null || {
  cat "$AIRFLOW_HOME/emulator.log" >&2
  echo "The emulator did not start" >&2
  exit 1
}

# The connection in the metadata DB (so the UI lists it), re-pointed at this run's emulator port.
"$PY" scripts/store_connection.py "http://$HOST:$EMULATOR_PORT/v1" "The local OpenAI Batch emulator (make airflow)" >"$AIRFLOW_HOME/connection.log" 2>&1

echo "Starting api-server, scheduler, dag-processor and triggerer (logs: $AIRFLOW_HOME/<component>.log) ..."
start api-server airflow api-server
start scheduler airflow scheduler
start dag-processor airflow dag-processor
start triggerer airflow triggerer

healthy() { # every part of /api/v2/monitor/health says "healthy" (metadatabase, scheduler, triggerer, ...)
  local health
  health=$(curl -sf "$URL/api/v2/monitor/health" 2>/dev/null) || return 1
  "$PY" -c 'import json, sys; sys.exit(any(v.get("status") != "healthy" for v in json.loads(sys.argv[1]).values()))' \
    "$health" 2>/dev/null
}
all_alive() { # exit, with the tail of its log, when any component has died
  local name
  for name in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
      tail -n 40 "$AIRFLOW_HOME/$name.log" >&2
      echo "$name exited $1; full log: $AIRFLOW_HOME/$name.log" >&2
      exit 1
    fi
  done
}
deadline=$((SECONDS + ${AIRFLOW_UI_START_TIMEOUT:-180}))
until healthy; do
  all_alive "during startup"
  if ((SECONDS > deadline)); then
    echo "Airflow was not healthy after ${AIRFLOW_UI_START_TIMEOUT:-180}s; logs in $AIRFLOW_HOME" >&2
    exit 1
  fi
  sleep 1
done

cat <<EOF

  Airflow is ready: $URL
  Login:            admin / $ADMIN_PASSWORD (or viewer / $VIEWER_PASSWORD: reads DAGs, not connections)
  OpenAI Batches:   $URL/plugin/openai-batches (Browse menu), and the "Batch status" tab of a task
  DAGs:             $AIRFLOW__CORE__DAGS_FOLDER (trigger openai_batch_example)
  Connection:       openai_default -> http://$HOST:$EMULATOR_PORT/v1 (OpenAI Batch emulator, fake key)
  Logs:             $AIRFLOW_HOME/{api-server,scheduler,dag-processor,triggerer,emulator}.log

  Press Ctrl-C to stop.
EOF

# Run until a signal arrives or a component dies.
while true; do
  all_alive "unexpectedly"
  sleep 2 & # in the background so that `wait` returns as soon as a signal arrives
  wait $! || true
done
