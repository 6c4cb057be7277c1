#!/usr/bin/env bash
# make demo: run the example DAG end to end (`airflow dags test`, the sensor deferring and resuming)
# against the local emulator, or against the real API when OPENAI_API_KEY is set.
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
  port=$($PY -c "from airflow_provider_openai_batch.emulator.server import free_port; print(free_port())")
  $PY -m airflow_provider_openai_batch.emulator --port "$port" --phase-seconds "${DEMO_PHASE_SECONDS:-2}" \
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
echo "Running: airflow dags test openai_batch_example"
start=$(date +%s)
if ! .venv/bin/airflow dags test openai_batch_example >"$log" 2>&1; then
  tail -n 60 "$log"
  echo "The example DAG failed; full log: $log" >&2
  exit 1
fi
echo
echo "== Summary ($(( $(date +%s) - start ))s; full log: $log)"
grep -E "deferr|Trigger|OpenAI batch" "$log" | grep -oE "(Task is deferred|[Dd]eferr[a-z]+ .{0,60}|OpenAI batch .*)" | sed -E 's/ +\[airflow[^]]*\].*$//' | uniq | head -n 12 || true
grep -E "^(prompt-[0-9]+:|SUMMARY)|(prompt-[0-9]+: |SUMMARY \{)" "$log" | sed -E 's/.*(prompt-[0-9]+: |SUMMARY )/\1/' | sed -E 's/ \[[a-z.]+\].*$//' | head -n 8
grep -q "SUMMARY .*'status': 'completed'" "$log" || { echo "expected a completed batch" >&2; exit 1; }
echo
echo "== The results as data: one row per prompt, in prompt order (BatchResultsOperator's manifest)"
grep -oE "MANIFEST \{.*\}" "$log" | head -n 1 | sed -E 's/^MANIFEST //' | $PY -c '
import ast, json, sys
manifest = ast.literal_eval(sys.stdin.read())
print(json.dumps(manifest, indent=2))
' || { echo "expected a results manifest" >&2; exit 1; }
