#!/usr/bin/env bash
# make demo: run the TaskFlow example end to end (`airflow dags test openai_batch_taskflow`: prompts in, the job
# deferred and resumed, typed rows landed and read back) against the local emulator, or against the real API
# when OPENAI_API_KEY is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export AIRFLOW_HOME="$PWD/.airflow/demo"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/example_dags"
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
mkdir -p "$AIRFLOW_HOME"
log="$AIRFLOW_HOME/dags-test.log"

if [[ -n "${OPENAI_API_KEY:-}" ]]; then
  echo "OPENAI_API_KEY is set: running against the real OpenAI API (this creates a small, billed batch)."
  export AIRFLOW_CONN_OPENAI_DEFAULT="{\"conn_type\": \"openai_batch\", \"password\": \"${OPENAI_API_KEY}\"}"
  export OPENAI_BATCH_POLL_INTERVAL=${OPENAI_BATCH_POLL_INTERVAL:-60}
else
  port=$($PY -c "from openai_batch_emulator.server import free_port; print(free_port())")
  $PY -m openai_batch_emulator --port "$port" --phase-seconds "${DEMO_PHASE_SECONDS:-2}" \
    >"$AIRFLOW_HOME/emulator.log" 2>&1 &
  emulator=$!
  trap 'kill $emulator 2>/dev/null || true; wait $emulator 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/_emulator/health" >/dev/null && break
    sleep 0.1
  done
  echo "Emulator running on http://127.0.0.1:$port/v1"
  export AIRFLOW_CONN_OPENAI_DEFAULT="{\"conn_type\": \"openai_batch\", \"host\": \"http://127.0.0.1:$port/v1\", \"password\": \"demo-key\"}"
  export OPENAI_BATCH_POLL_INTERVAL=${OPENAI_BATCH_POLL_INTERVAL:-1}
fi

.venv/bin/airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1
echo "Running: airflow dags test openai_batch_taskflow (example_dags/openai_batch_taskflow.py)"
start=$(date +%s)
if ! .venv/bin/airflow dags test openai_batch_taskflow >"$log" 2>&1; then
  tail -n 60 "$log"
  echo "The example DAG failed; full log: $log" >&2
  exit 1
fi
echo
echo "== Done in $(( $(date +%s) - start ))s (full log: $log)"
grep -qE "new_state=deferred|Task is deferred" "$log" && echo "The task waited in the triggerer (deferred) and resumed to export."
echo
echo "== The manifest @task.openai_batch returned"
grep -oE "MANIFEST \{.*\}" "$log" | head -n 1 | sed -E 's/^MANIFEST //' | $PY -c '
import ast, json, sys
print(json.dumps(ast.literal_eval(sys.stdin.read()), indent=2))
' || { echo "expected a manifest" >&2; exit 1; }
echo
echo "== Two rows, read back and parsed by the downstream task (read_rows + the Pydantic output_type)"
grep -oE "ROW .*" "$log" | sed -E 's/^ROW //; s/ \[[a-z_.]+\].*$//' | head -n 2
[[ $(grep -cE "ROW request-[0-9]+ succeeded" "$log") -ge 2 ]] || { echo "expected two parsed rows" >&2; exit 1; }
