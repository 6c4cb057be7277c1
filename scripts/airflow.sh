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

LOG_DIR=$AIRFLOW_HOME
# shellcheck source=scripts/local_airflow.sh
source "$ROOT/scripts/local_airflow.sh"
tag_run OPENAI_BATCH_AIRFLOW_UI_TAG # the final sweep finds every process of this run by it

if port_busy "$AIRFLOW_PORT"; then
  echo "Port $AIRFLOW_PORT on $HOST is already in use: stop what runs there or set AIRFLOW_PORT." >&2
  exit 1
fi
EMULATOR_PORT=${EMULATOR_PORT:-$($PY -c "from openai_batch_emulator.server import free_port; print(free_port())")}

# --- Airflow configuration: everything through the environment, inherited by every component
airflow_env "$AIRFLOW_PORT"
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/example_dags
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-4}
# viewer: the role that may read DAGs but not edit them, nor read connections (the batches page shows it no batch).
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin,viewer:viewer
export AIRFLOW__API__WORKERS=1
export OPENAI_BATCH_POLL_INTERVAL=${OPENAI_BATCH_POLL_INTERVAL:-2}
printf '{"admin": "%s", "viewer": "%s"}\n' "$ADMIN_PASSWORD" "$VIEWER_PASSWORD" \
  >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"

stop_all() {
  echo "Stopping Airflow and the emulator..."
  terminate "${!PIDS[@]}"
  sweep 15 # a graceful shutdown, then whatever is left is killed
}
stop_on_exit stop_all
# A fresh log per component for each run.
rm -f "$LOG_DIR"/{emulator,api-server,scheduler,dag-processor,triggerer}.log

# --- the emulator, first: it starts in a second
start emulator "$PY" -m openai_batch_emulator --host "$HOST" --port "$EMULATOR_PORT" \
  --phase-seconds "${EMULATOR_PHASE_SECONDS:-2}"

echo "Preparing the Airflow database in $AIRFLOW_HOME ..."
migrate_db
wait_for "The emulator" 30 curl -sf "http://$HOST:$EMULATOR_PORT/_emulator/health"

# The connection in the metadata DB (so the UI lists it), re-pointed at this run's emulator port.
store_connection "$EMULATOR_PORT" "The local OpenAI Batch emulator (make airflow)"

echo "Starting api-server, scheduler, dag-processor and triggerer (logs: $AIRFLOW_HOME/<component>.log) ..."
start api-server airflow api-server
start scheduler airflow scheduler
start dag-processor airflow dag-processor
start triggerer airflow triggerer

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
