#!/usr/bin/env bash
# make cluster: a distributed Airflow 3 on this machine, as production runs it: PostgreSQL (metadata database
# and Celery result backend) and Redis (Celery broker) from Debian's packages, the Celery executor with two
# workers, TWO triggerers, scheduler, dag-processor and api-server, plus the OpenAI Batch emulator and an
# `openai_default` connection pointing at it. Everything listens on 127.0.0.1 only. Ctrl-C (or SIGTERM)
# stops every process this script started and leaves none behind.
#
# State lives under CLUSTER_HOME (default .airflow/cluster, ignored by git): pg/ (the database files), redis/,
# airflow/ (AIRFLOW_HOME: logs), secrets.env (generated passwords, mode 0600), and <component>.log for each
# process. PostgreSQL runs as the `postgres` system user (initdb refuses root); the other processes as the caller.
# Started as root, pg is a link to CLUSTER_PG_ROOT/<id of CLUSTER_HOME>/data, owned by `postgres`: that user may not
# enter a checkout under a private directory (a home directory, `mktemp -d`), and its permissions are left alone.
#
# Supervision: a component that exits is started again (make soak restarts PostgreSQL on purpose), unless
# CLUSTER_HOME/hold/<name> exists: make soak holds the triggerer and the worker it kills down, so that their
# work is seen moving to the other one. The pids of every process are in CLUSTER_HOME/pids/<name>.pid.
#
# Settings (environment):
#   CLUSTER_HOME                  state directory (default .airflow/cluster)
#   CLUSTER_PORT_BASE             first of the ports below (default 18200); each can be set on its own:
#     CLUSTER_API_PORT              api-server / UI (base+0)     CLUSTER_PG_PORT        PostgreSQL (base+1)
#     CLUSTER_REDIS_PORT            Redis (base+2)               CLUSTER_EMULATOR_PORT  emulator (base+3)
#     CLUSTER_LOG_PORT_BASE         log servers of worker1, worker2, triggerer1, triggerer2 (base+4 .. base+7)
#   CLUSTER_DAGS_FOLDER           DAGs folder (default example_dags)
#   CLUSTER_WORKER_CONCURRENCY    task slots per Celery worker (default 8)
#   CLUSTER_EMULATOR_ARGS         extra emulator arguments (e.g. "--fault-rate 0.2 --seed 7")
#   CLUSTER_FRESH=1               start from an empty database and emulator
#   CLUSTER_PG_ROOT               as root: where PostgreSQL's files go (default /var/lib/openai-batch-cluster)
#   CLUSTER_START_TIMEOUT         seconds to wait for a healthy cluster (default 300)
#   AIRFLOW_ADMIN_PASSWORD        password of the `admin` user (default admin)
#   OPENAI_BATCH_POLL_INTERVAL    the example DAGs' poll interval (default 5 seconds)
# Any AIRFLOW__SECTION__KEY in the environment reaches every component (the soak tunes heartbeats that way).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
export PATH="$VENV/bin:$PATH"
HOST=127.0.0.1

CLUSTER_HOME=${CLUSTER_HOME:-$ROOT/.airflow/cluster}
case $CLUSTER_HOME in /*) ;; *) CLUSTER_HOME=$ROOT/$CLUSTER_HOME ;; esac
BASE=${CLUSTER_PORT_BASE:-18200}
API_PORT=${CLUSTER_API_PORT:-$BASE}
PG_PORT=${CLUSTER_PG_PORT:-$((BASE + 1))}
REDIS_PORT=${CLUSTER_REDIS_PORT:-$((BASE + 2))}
EMULATOR_PORT=${CLUSTER_EMULATOR_PORT:-$((BASE + 3))}
LOG_BASE=${CLUSTER_LOG_PORT_BASE:-$((BASE + 4))}
URL="http://$HOST:$API_PORT"
PIDDIR=$CLUSTER_HOME/pids
LOG_DIR=$CLUSTER_HOME
# shellcheck source=scripts/local_airflow.sh
source "$ROOT/scripts/local_airflow.sh"

mkdir -p "$CLUSTER_HOME"
# One cluster per CLUSTER_HOME: the lock is inherited by every component, so it is free again only when the
# last process of an earlier run is gone.
exec 9>"$CLUSTER_HOME/lock"
if ! flock -n 9; then
  echo "Another cluster runs from $CLUSTER_HOME (or its processes are still stopping)." >&2
  exit 1
fi
if [[ ${CLUSTER_FRESH:-0} == 1 ]]; then
  find "$CLUSTER_HOME" -mindepth 1 -maxdepth 1 ! -name lock -exec rm -rf {} +
fi
mkdir -p "$PIDDIR"
rm -f "$PIDDIR"/*.pid "$CLUSTER_HOME/ready"
rm -rf "$CLUSTER_HOME/hold"

# --- Debian packages, installed when missing (a fresh machine has neither)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z $PG_BIN || ! -x $PG_BIN/initdb ]] || ! command -v redis-server >/dev/null; then
  echo "Installing PostgreSQL and Redis from Debian's packages ..."
  apt-get update -q >"$CLUSTER_HOME/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql redis-server >>"$CLUSTER_HOME/apt.log" 2>&1 || {
    tail -n 20 "$CLUSTER_HOME/apt.log" >&2
    echo "apt-get install postgresql redis-server failed; see $CLUSTER_HOME/apt.log" >&2
    exit 1
  }
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
# The package's own service is never used: this script runs its own server on its own port and data.
# shellcheck source=scripts/cluster_postgres.sh
source "$ROOT/scripts/cluster_postgres.sh"
postgres_user # PG_USER; PG_RUN, a command prefix for start() (setsid runs a program, not a shell function)

# --- secrets: generated once, kept out of logs and of git
SECRETS=$CLUSTER_HOME/secrets.env
if [[ ! -s $SECRETS ]]; then
  (
    umask 077
    "$PY" - >"$SECRETS" <<'EOF'
import base64, os, secrets
print(f"PG_PASSWORD={secrets.token_hex(16)}")
print(f"REDIS_PASSWORD={secrets.token_hex(16)}")
print(f"JWT_SECRET={secrets.token_hex(32)}")
print(f"FERNET_KEY={base64.urlsafe_b64encode(os.urandom(32)).decode()}")
EOF
  )
fi
# shellcheck disable=SC1090
source "$SECRETS"

for port in "$API_PORT" "$PG_PORT" "$REDIS_PORT" "$EMULATOR_PORT" $(seq "$LOG_BASE" $((LOG_BASE + 3))); do
  if port_busy "$port"; then
    echo "Port $port on $HOST is already in use: stop what runs there or set CLUSTER_PORT_BASE (see $0)." >&2
    exit 1
  fi
done

# The final sweep finds every process of this run by this tag, a PostgreSQL started again included.
tag_run OPENAI_BATCH_CLUSTER_TAG

# --- Airflow configuration: everything through the environment, inherited by every component
export AIRFLOW_HOME=$CLUSTER_HOME/airflow
mkdir -p "$AIRFLOW_HOME"
airflow_env "$API_PORT"
DB_URL="postgresql+psycopg2://airflow:$PG_PASSWORD@$HOST:$PG_PORT/airflow"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$DB_URL
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
export AIRFLOW__CELERY__BROKER_URL="redis://:$REDIS_PASSWORD@$HOST:$REDIS_PORT/0"
export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://airflow:$PG_PASSWORD@$HOST:$PG_PORT/airflow"
export AIRFLOW__CELERY__WORKER_CONCURRENCY=${CLUSTER_WORKER_CONCURRENCY:-8}
export AIRFLOW__CORE__FERNET_KEY=$FERNET_KEY
export AIRFLOW__API_AUTH__JWT_SECRET=$JWT_SECRET
export AIRFLOW__CORE__DAGS_FOLDER=${CLUSTER_DAGS_FOLDER:-$ROOT/example_dags}
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-32}
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-32}
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__API__WORKERS=${AIRFLOW__API__WORKERS:-2}
export OPENAI_BATCH_POLL_INTERVAL=${OPENAI_BATCH_POLL_INTERVAL:-5}
printf '{"admin": "%s"}\n' "${AIRFLOW_ADMIN_PASSWORD:-admin}" >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"

stop_all() {
  echo "Stopping the cluster ..."
  local name left pid airflow=()
  # Airflow first, the database and the broker last, so that the components shut down cleanly.
  for name in "${!PIDS[@]}"; do
    [[ $name == postgres || $name == redis ]] || airflow+=("$name")
  done
  terminate "${airflow[@]}"
  for _ in $(seq 150); do # up to 15 s for a graceful shutdown
    left=0
    for name in "${airflow[@]}"; do
      kill -0 "${PIDS[$name]}" 2>/dev/null && left=1
    done
    [[ $left == 0 ]] && break
    sleep 0.1
  done
  for name in redis postgres; do
    pid=${PIDS[$name]:-}
    [[ -n $pid ]] && { kill -INT "$pid" 2>/dev/null || true; } # PostgreSQL's fast shutdown
  done
  sweep 15
  rm -f "$PIDDIR"/*.pid "$CLUSTER_HOME/ready"
}
stop_on_exit stop_all

# --- PostgreSQL: its own data directory and port; password authentication on 127.0.0.1 only
postgres_dirs # PGDATA, PGSOCK: where PG_USER can reach them, whatever the checkout's permissions
postgres_init
start postgres "${PG_RUN[@]}" "$PG_BIN/postgres" -D "$PGDATA" -p "$PG_PORT" -k "$PGSOCK" \
  -c listen_addresses="$HOST" -c max_connections=300
export PGPASSWORD=$PG_PASSWORD
wait_for PostgreSQL 60 "$PG_BIN/pg_isready" -h "$HOST" -p "$PG_PORT" -U airflow -d postgres
"$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U airflow -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='airflow'" |
  grep -q 1 || "$PG_BIN/createdb" -h "$HOST" -p "$PG_PORT" -U airflow airflow
unset PGPASSWORD

# --- Redis: the Celery broker, with a password, appendonly so a restart keeps queued tasks
mkdir -p "$CLUSTER_HOME/redis"
REDIS_CONF=$CLUSTER_HOME/redis/redis.conf
(
  umask 077
  printf 'bind %s\nport %s\nrequirepass %s\ndir %s\nappendonly yes\nprotected-mode yes\nsave ""\n' \
    "$HOST" "$REDIS_PORT" "$REDIS_PASSWORD" "$CLUSTER_HOME/redis" >"$REDIS_CONF"
)
start redis redis-server "$REDIS_CONF"
wait_for Redis 30 port_busy "$REDIS_PORT"

# --- the emulator (state kept under CLUSTER_HOME, so its restart loses nothing either)
# shellcheck disable=SC2086
start emulator "$PY" -m openai_batch_emulator --host "$HOST" --port "$EMULATOR_PORT" \
  --phase-seconds "${EMULATOR_PHASE_SECONDS:-2}" --data-dir "$CLUSTER_HOME/emulator" ${CLUSTER_EMULATOR_ARGS:-}

echo "Preparing the Airflow database ..."
migrate_db
wait_for "The emulator" 60 curl -sf "http://$HOST:$EMULATOR_PORT/_emulator/health"

# The connection in the metadata DB (so the UI lists it and every worker and triggerer reads it there).
store_connection "$EMULATOR_PORT" "The local OpenAI Batch emulator (make cluster)"

echo "Starting api-server, scheduler, dag-processor, 2 triggerers and 2 Celery workers (logs: $CLUSTER_HOME/*.log) ..."
start api-server airflow api-server
start scheduler airflow scheduler
start dag-processor airflow dag-processor
# LOGNAME becomes the triggerer Job's unixname in the metadata DB: it tells which job is which process.
start triggerer1 env LOGNAME=airflow-triggerer1 AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((LOG_BASE + 2)) \
  airflow triggerer
start triggerer2 env LOGNAME=airflow-triggerer2 AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((LOG_BASE + 3)) \
  airflow triggerer
start worker1 env AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$LOG_BASE \
  airflow celery worker --celery-hostname "worker1@%h" --concurrency "$AIRFLOW__CELERY__WORKER_CONCURRENCY"
start worker2 env AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((LOG_BASE + 1)) \
  airflow celery worker --celery-hostname "worker2@%h" --concurrency "$AIRFLOW__CELERY__WORKER_CONCURRENCY"

READY=0
DOWN=" "
watch() { # start a component again when it exits, unless it is held (CLUSTER_HOME/hold/<name>: make soak's kills)
  local name
  for name in "${!PIDS[@]}"; do
    kill -0 "${PIDS[$name]}" 2>/dev/null && continue
    if [[ $READY == 0 && $name != postgres && $name != redis ]]; then
      tail -n 40 "$CLUSTER_HOME/$name.log" >&2
      echo "$name exited during start-up; full log: $CLUSTER_HOME/$name.log" >&2
      exit 1
    fi
    if [[ -e $CLUSTER_HOME/hold/$name ]]; then
      if [[ $DOWN != *" $name "* ]]; then
        echo "$(date -u +%T) $name exited; held down (the other components carry on)"
        DOWN="$DOWN$name "
      fi
      continue
    fi
    echo "$(date -u +%T) $name exited; starting it again"
    restart "$name"
  done
}
deadline=$((SECONDS + ${CLUSTER_START_TIMEOUT:-300}))
until healthy; do
  watch
  if ((SECONDS > deadline)); then
    echo "The cluster was not healthy after ${CLUSTER_START_TIMEOUT:-300}s; logs in $CLUSTER_HOME" >&2
    exit 1
  fi
  sleep 1
done
READY=1
touch "$CLUSTER_HOME/ready"

cat <<EOF

  The cluster is ready: $URL  (login admin / ${AIRFLOW_ADMIN_PASSWORD:-admin})
  Metadata DB:   PostgreSQL $(basename "$(dirname "$PG_BIN")") on $HOST:$PG_PORT (data in $PGDATA)
  Broker:        Redis on $HOST:$REDIS_PORT; executor CeleryExecutor, 2 workers x $AIRFLOW__CELERY__WORKER_CONCURRENCY slots
  Triggerers:    2;  DAGs: $AIRFLOW__CORE__DAGS_FOLDER
  Connection:    openai_default -> http://$HOST:$EMULATOR_PORT/v1 (OpenAI Batch emulator, fake key)
  Logs:          $CLUSTER_HOME/<component>.log

  Press Ctrl-C to stop.
EOF

while true; do
  watch
  sleep 1 & # in the background so that `wait` returns as soon as a signal arrives
  wait $! || true
done
