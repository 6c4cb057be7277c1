# Sourced by scripts/airflow.sh (make airflow) and scripts/cluster.sh (make cluster): what both need to run a
# local Airflow as processes of this script, and to leave none behind.
#
# The caller sets HOST (the loopback address), URL (the api-server's), PY (the venv's python) and LOG_DIR (each
# component logs to LOG_DIR/<name>.log), and PIDDIR to keep a pid file per component, then calls tag_run first.

declare -A PIDS=() COMMANDS=()

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

tag_run() { # tag_run VAR: every process started from here carries VAR=<this run's tag> in its environment
  TAG_VAR=$1
  TAG="$$-$(date +%s%N)"
  export "$TAG_VAR=$TAG"
}

# Pids of every live process carrying this run's tag, found by pid so that task processes Airflow moves into
# process groups of their own are found too. Pure bash: a helper process would carry the tag itself.
tagged_pids() {
  local f pid var
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" ]] && continue
    while IFS= read -r -d '' var || [[ -n $var ]]; do
      if [[ $var == "$TAG_VAR=$TAG" ]]; then
        echo "$pid"
        break
      fi
    done 2>/dev/null <"$f" || true
  done
}

start() { # start NAME COMMAND...: a background child in a session of its own, output appended to NAME.log
  local name=$1
  shift
  COMMANDS[$name]=$(printf '%q ' "$@")
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  PIDS[$name]=$!
  if [[ -n ${PIDDIR:-} ]]; then echo "$!" >"$PIDDIR/$name.pid"; fi
}
restart() { # start NAME again with the command it was first started with
  local name=$1
  eval "set -- ${COMMANDS[$name]}"
  start "$name" "$@"
}

terminate() { # terminate NAME...: SIGTERM each component's process group (or the process, if it left it)
  local name pid
  for name in "$@"; do
    pid=${PIDS[$name]:-}
    [[ -n $pid ]] || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
}

sweep() { # sweep SECONDS: wait that long for every tagged process to exit, then SIGKILL the ones left
  local left
  for _ in $(seq $(($1 * 5))); do
    left=$(tagged_pids)
    [[ -z $left ]] && break
    sleep 0.2
  done
  left=$(tagged_pids)
  if [[ -n $left ]]; then
    echo "Killing leftover processes: $(echo $left)"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  wait 2>/dev/null || true
}

stop_on_exit() { # stop_on_exit FUNCTION: run it on Ctrl-C, SIGTERM and exit, once
  STOP_FUNCTION=$1
  STOPPING=0
  trap '_stop_once; exit 130' INT TERM
  trap _stop_once EXIT
}
_stop_once() {
  [[ $STOPPING == 1 ]] && return
  STOPPING=1
  trap '' INT TERM
  echo
  "$STOP_FUNCTION"
  echo "Stopped."
}

wait_for() { # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, or exit naming WHAT
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "$what did not come up within ${seconds}s; logs in $LOG_DIR" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# --- Airflow

airflow_env() { # airflow_env PORT: the settings both runs share, through the environment every component inherits
  unset AIRFLOW_CONN_OPENAI_DEFAULT # would take precedence over the emulator connection stored in the database
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
  export AIRFLOW__CORE__TEST_CONNECTION=Enabled
  export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$AIRFLOW_HOME/simple_auth_manager_passwords.json
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$URL/execution/
  export AIRFLOW__API__HOST=$HOST
  export AIRFLOW__API__PORT=$1
  export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1
  export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
}

migrate_db() {
  if ! airflow db migrate >"$LOG_DIR/db-migrate.log" 2>&1; then
    tail -n 40 "$LOG_DIR/db-migrate.log" >&2
    echo "airflow db migrate failed; full log: $LOG_DIR/db-migrate.log" >&2
    exit 1
  fi
}

store_connection() { # store_connection EMULATOR_PORT DESCRIPTION: openai_default in the metadata database
  "$PY" "$ROOT/scripts/store_connection.py" "http://$HOST:$1/v1" "$2" >"$LOG_DIR/connection.log" 2>&1
}

healthy() { # every part of /api/v2/monitor/health says "healthy" (metadatabase, scheduler, triggerer, ...)
  local health
  health=$(curl -sf "$URL/api/v2/monitor/health" 2>/dev/null) || return 1
  "$PY" -c 'import json, sys; sys.exit(any(v.get("status") != "healthy" for v in json.loads(sys.argv[1]).values()))' \
    "$health" 2>/dev/null
}
