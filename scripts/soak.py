"""make soak: the distributed cluster of scripts/cluster.sh under faults and kills, checked, with one summary line.

It starts the cluster fresh (its own database and emulator state), with the soak DAG (scripts/soak_dags) and
the emulator faulting SOAK_FAULT_RATE of all API requests (seeded), runs SOAK_TASKS mapped batch tasks
(create + deferred wait + results), and meanwhile:

1. ``kill -9`` of the Celery worker running the most create tasks (its whole process tree) right after the
   first create POSTs reach the emulator: its tasks are retried and must re-attach to their batches (one
   batch per task);
2. ``kill -9`` of ``triggerer1`` (its whole process tree) once about half the waits are deferred: Airflow
   must hand its triggers to ``triggerer2`` and every task resume exactly once, none later than its poll
   interval plus the triggerer health-check threshold after its batch ended;
3. a PostgreSQL restart (fast shutdown, started again by cluster.sh) once every wait has fired, while the
   results tasks still run.

Then it checks every task instance succeeded, the emulator created exactly SOAK_TASKS batches, every task's
XCom holds its own answers, and prints ``SOAK tasks=N succeeded=N batches=N triggerer_kills=K
worker_kills=K postgres_restarts=K`` with every count computed from what happened. Exit status 0 only when
every check passed. The cluster is stopped at the end, however the soak ends.

Settings (environment): SOAK_TASKS (200), SOAK_POLL (poll interval, 5 s), SOAK_FAULT_RATE (0.2), SOAK_SEED
(14), SOAK_PHASE_SECONDS (emulator phase length, 0.3 s per task, at least 10 s), SOAK_TIMEOUT (seconds for the
run, 3600), and the CLUSTER_* settings of scripts/cluster.sh (ports, home). Triggerer heartbeats are tuned for
the soak: ``[triggerer] job_heartbeat_sec`` 2 and ``triggerer_health_check_threshold`` 10 (defaults 5 and 30),
and ``[scheduler] task_instance_heartbeat_timeout`` 30 (default 300), so that a killed component is noticed
in seconds; production keeps the defaults or its own (docs/production.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "openai_batch_soak"
HEARTBEAT_SEC = 2
HEALTH_THRESHOLD = 10
TI_HEARTBEAT_TIMEOUT = 30


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


TASKS = env_int("SOAK_TASKS", 200)
POLL = env_float("SOAK_POLL", 5.0)
FAULT_RATE = env_float("SOAK_FAULT_RATE", 0.2)
SEED = env_int("SOAK_SEED", 14)
# Long enough that about half the waits are deferred at once while the creates of the others still run.
PHASE_SECONDS = env_float("SOAK_PHASE_SECONDS", max(10.0, 0.3 * TASKS))
TIMEOUT = env_float("SOAK_TIMEOUT", 3600.0)
HOME = Path(os.environ.get("CLUSTER_HOME", ROOT / ".airflow" / "cluster"))
if not HOME.is_absolute():
    HOME = ROOT / HOME
BASE = env_int("CLUSTER_PORT_BASE", 18200)
API = f"http://127.0.0.1:{env_int('CLUSTER_API_PORT', BASE)}"
EMULATOR = f"http://127.0.0.1:{env_int('CLUSTER_EMULATOR_PORT', BASE + 3)}"
PG_PORT = env_int("CLUSTER_PG_PORT", BASE + 1)
SOAK_DIR = HOME / "soak"


def log(message: str) -> None:
    print(f"{datetime.utcnow():%H:%M:%S} {message}", flush=True)


class Failed(Exception):
    """A check of the soak failed."""


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc before a kill, so orphans are not missed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(name: str) -> int:
    """``kill -9`` a cluster component and everything it started; cluster.sh is told to leave it down."""
    (HOME / "hold").mkdir(exist_ok=True)
    (HOME / "hold" / name).touch()
    pid = int((HOME / "pids" / f"{name}.pid").read_text())
    tree = descendants(pid)
    for each in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    return len(tree)


class Cluster:
    """The REST API, the emulator and the metadata database of the running cluster."""

    def __init__(self) -> None:
        self.http = requests.Session()
        secrets = dict(line.split("=", 1) for line in (HOME / "secrets.env").read_text().split())
        self.pg_password = secrets["PG_PASSWORD"]
        self.pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]

    def login(self) -> None:
        answer = self.http.post(f"{API}/auth/token", json={"username": "admin", "password": "admin"}, timeout=30)
        answer.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(30):  # the API server also restarts its database connections after a restart
            try:
                answer = self.http.request(method, f"{API}/api/v2{path}", timeout=60, **kwargs)
                if answer.status_code == 401:
                    self.login()
                    continue
                if answer.status_code < 500:
                    answer.raise_for_status()
                    return answer.json()
            except requests.ConnectionError:
                pass
            time.sleep(min(5, 0.5 * (attempt + 1)))
        raise Failed(f"{method} {path} kept failing")

    def emulator_stats(self) -> dict[str, Any]:
        return requests.get(f"{EMULATOR}/_emulator/stats", timeout=30).json()

    def sql(self, query: str) -> list[list[str]]:
        done = subprocess.run(
            [
                str(self.pg_bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(PG_PORT),
                "-U",
                "airflow",
                "-d",
                "airflow",
                "-tAF",
                "\t",
                "-c",
                query,
            ],
            env={**os.environ, "PGPASSWORD": self.pg_password},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise Failed(f"psql: {done.stderr.strip()}")
        return [line.split("\t") for line in done.stdout.splitlines() if line]


def start_cluster() -> subprocess.Popen[bytes]:
    """Start cluster.sh (fresh state, the soak's settings); wait for it with wait_ready()."""
    env = {
        **os.environ,
        "CLUSTER_FRESH": "1",
        "CLUSTER_HOME": str(HOME),
        "CLUSTER_DAGS_FOLDER": str(ROOT / "scripts" / "soak_dags"),
        "CLUSTER_EMULATOR_ARGS": f"--fault-rate {FAULT_RATE} --seed {SEED}",
        "EMULATOR_PHASE_SECONDS": str(PHASE_SECONDS),
        "OPENAI_BATCH_POLL_INTERVAL": str(POLL),
        "OPENAI_BATCH_SOAK_DIR": str(SOAK_DIR),
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": str(HEARTBEAT_SEC),
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_THRESHOLD),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TI_HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }
    log(f"starting the cluster (logs in {HOME}) ...")
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "cluster.sh")], env=env, cwd=ROOT)


def wait_ready(process: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 900
    while not (HOME / "ready").exists():
        if process.poll() is not None:
            raise Failed(f"cluster.sh exited with {process.returncode} before it was ready")
        if time.time() > deadline:
            raise Failed("the cluster was not ready within 900 s")
        time.sleep(1)
    SOAK_DIR.mkdir(parents=True, exist_ok=True)


def stop_cluster(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    started = time.time()
    # SIGTERM ends the soak like Ctrl-C does: through the finally below, which stops the cluster.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    process = start_cluster()
    try:
        wait_ready(process)
        summary, problems = soak(Cluster())
    except Failed as err:
        summary, problems = None, [str(err)]
    finally:
        stop_cluster(process)
    for problem in problems:
        log(f"FAILED: {problem}")
    log(f"soak took {time.time() - started:.0f} s (cluster start and stop included)")
    if summary is not None:
        print(summary, flush=True)
    return 1 if problems else 0


def soak(cluster: Cluster) -> tuple[str, list[str]]:
    cluster.login()
    deadline = time.time() + 600
    while True:  # the DAG processor parses the soak DAG after start-up
        try:
            cluster.api("GET", f"/dags/{DAG_ID}")
            break
        except (Failed, requests.HTTPError):
            if time.time() > deadline:
                raise Failed(f"DAG {DAG_ID} was not parsed within 600 s") from None
            time.sleep(2)
    cluster.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    run = cluster.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"tasks": TASKS}})
    run_id = run["dag_run_id"]
    log(f"triggered {DAG_ID} run {run_id} with {TASKS} tasks; faults at {FAULT_RATE:.0%} (seed {SEED})")

    worker_kills = triggerer_kills = postgres_restarts = 0
    killed: dict[str, Any] = {}
    deadline = time.time() + TIMEOUT
    state = "running"
    while state not in ("success", "failed"):
        if time.time() > deadline:
            raise Failed(f"the run did not finish within {TIMEOUT:.0f} s")
        time.sleep(1)
        if worker_kills == 0:
            posts = cluster.emulator_stats()["requests"].get("POST /v1/batches", 0)
            worker = busiest_worker(cluster, run_id) if posts >= max(2, TASKS // 10) else None
            if worker is not None:
                count = kill_tree(worker)
                worker_kills += 1
                log(f"kill -9 {worker} ({count} processes) right after {posts} create POSTs, while it ran creates")
        elif triggerer_kills == 0:
            states = dict(
                cluster.sql(
                    f"SELECT coalesce(state, 'none'), count(*) FROM task_instance WHERE dag_id = '{DAG_ID}' "
                    f"AND run_id = '{run_id}' AND task_id = 'create' GROUP BY 1"
                )
            )
            deferred = int(states.get("deferred", 0))
            to_start = sum(int(states.get(s, 0)) for s in ("none", "scheduled", "queued", "up_for_retry"))
            # About half the waits deferred, or as many as there will be at once (every create has run), and
            # triggerer1 holding some of them (triggerer1's job: the one its LOGNAME names, see cluster.sh).
            job = triggerer_job(cluster, "airflow-triggerer1")
            before = triggers_by_job(cluster)
            if (deferred >= TASKS // 2 or (deferred and not to_start and len(states) > 1)) and before.get(job):
                killed = {"job": job, "held": before[job], "before": before, "deferred": deferred, "at": time.time()}
                count = kill_tree("triggerer1")
                triggerer_kills += 1
                log(
                    f"kill -9 triggerer1 (job {job}, {count} processes) with {deferred} waits deferred, "
                    f"{before[job]} of them on it (triggers by job: {before})"
                )
        elif "moved_after" not in killed:
            left = triggers_by_job(cluster).get(killed["job"], 0)
            if not left:
                killed["moved_after"] = time.time() - killed["at"]
                log(f"its triggers moved to the other triggerer {killed['moved_after']:.0f} s after the kill")
        elif postgres_restarts == 0:
            # Once every wait has fired, while the results tasks still run: the restart's own effect on the
            # triggerers (see docs/production.md) is then not mixed into the hand-over's timing.
            states = dict(
                cluster.sql(
                    f"SELECT task_id || ':' || coalesce(state, 'none'), count(*) FROM task_instance "
                    f"WHERE dag_id = '{DAG_ID}' AND run_id = '{run_id}' GROUP BY 1"
                )
            )
            if int(states.get("create:success", 0)) == TASKS and int(states.get("results:success", 0)) < TASKS:
                pid = int((HOME / "pg" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)  # fast shutdown; cluster.sh starts it again
                postgres_restarts += 1
                log(f"PostgreSQL restarted mid-run (fast shutdown; cluster.sh starts it again): {states}")
                time.sleep(5)
        try:
            state = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        except (Failed, requests.HTTPError):
            continue
    log(f"run {run_id} ended: {state}")
    return check(cluster, run_id, worker_kills, triggerer_kills, postgres_restarts, killed)


def busiest_worker(cluster: Cluster, run_id: str) -> str | None:
    """The Celery worker whose process tree runs the most create tasks now (by the task instances' pids)."""
    rows = cluster.sql(
        f"SELECT pid FROM task_instance WHERE dag_id = '{DAG_ID}' AND run_id = '{run_id}' "
        "AND task_id = 'create' AND state = 'running' AND pid IS NOT NULL"
    )
    running = {int(row[0]) for row in rows}
    counts = {}
    for worker in ("worker1", "worker2"):
        tree = set(descendants(int((HOME / "pids" / f"{worker}.pid").read_text())))
        counts[worker] = len(running & tree)
    worker = max(counts, key=lambda name: counts[name])
    return worker if counts[worker] else None


def triggerer_job(cluster: Cluster, name: str) -> str | None:
    """The running triggerer job started as ``name`` (its Job's unixname: cluster.sh sets LOGNAME)."""
    rows = cluster.sql(
        "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' "
        f"AND unixname = '{name}' ORDER BY id DESC LIMIT 1"
    )
    return rows[0][0] if rows else None


def triggers_by_job(cluster: Cluster) -> dict[str, int]:
    """Triggers of the soak per triggerer job id ("0": not assigned yet)."""
    rows = cluster.sql("SELECT coalesce(triggerer_id, 0), count(*) FROM trigger GROUP BY 1 ORDER BY 1")
    return {job: int(count) for job, count in rows}


def check(
    cluster: Cluster,
    run_id: str,
    worker_kills: int,
    triggerer_kills: int,
    postgres_restarts: int,
    killed: dict[str, Any],
) -> tuple[str, list[str]]:
    problems: list[str] = []
    rows = cluster.sql(
        "SELECT task_id, map_index, state, try_number, extract(epoch FROM scheduled_dttm) FROM task_instance "
        f"WHERE dag_id = '{DAG_ID}' AND run_id = '{run_id}' AND map_index >= 0"
    )
    creates = {int(r[1]): r for r in rows if r[0] == "create"}
    results = {int(r[1]): r for r in rows if r[0] == "results"}

    def done(i: int) -> bool:
        return creates.get(i, ["", "", ""])[2] == "success" and results.get(i, ["", "", ""])[2] == "success"

    succeeded = sum(1 for i in range(TASKS) if done(i))
    if succeeded != TASKS:
        bad = [i for i in range(TASKS) if not done(i)]
        problems.append(f"{TASKS - succeeded} tasks did not succeed (map indexes {bad[:20]})")
    retried = sorted(i for i, r in creates.items() if int(r[3]) > 1)
    log(f"create tasks retried (worker kill, database restart, faults): {len(retried)} {retried[:20]}")
    if worker_kills and not retried:
        problems.append("the worker kill interrupted no create task, so no re-attach was exercised")

    stats = cluster.emulator_stats()
    batches = int(stats["batches_created"])
    if batches != TASKS:
        problems.append(f"the emulator created {batches} batches for {TASKS} tasks")
    log(f"emulator: {batches} batches, faults {stats.get('faults')}, requests {sum(stats['requests'].values())}")

    # Each task's XCom: its own batch, and the answers to its own questions.
    seen_batches: set[str] = set()
    completed_at: dict[int, float] = {}
    for i in range(TASKS):
        try:
            entry = cluster.api(
                "GET",
                f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/results/xcomEntries/return_value",
                params={"map_index": i, "deserialize": True},
            )
            batch = cluster.api(
                "GET",
                f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/create/xcomEntries/batch",
                params={"map_index": i, "deserialize": True},
            )["value"]
        except (Failed, requests.HTTPError) as err:
            problems.append(f"task {i}: no XCom ({err})")
            continue
        value = entry["value"]
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(batch, str):
            batch = json.loads(batch)
        answers = value["answers"]
        expected = {f"t{i}-q{j}" for j in range(2)}
        wrong = [
            custom_id
            for custom_id in expected
            if not (answers.get(custom_id) or "").endswith(f"soak task {i} question {custom_id.rsplit('q', 1)[1]}")
        ]
        if set(answers) != expected or wrong or value["batch_id"] != batch["id"] or batch["status"] != "completed":
            problems.append(f"task {i}: wrong XCom {value!r:.200}")
        if value["batch_id"] in seen_batches:
            problems.append(f"task {i}: batch {value['batch_id']} also belongs to another task")
        seen_batches.add(value["batch_id"])
        if batch.get("completed_at"):
            completed_at[i] = float(batch["completed_at"])

    # Every deferral of a task's last try resumed exactly once (a retry that re-attached to a batch that had
    # already ended finishes without deferring), no deferral of any try resumed twice, and none fired later than
    # its poll interval plus the health-check threshold after its batch ended (the trigger's firing time is the
    # task instance's scheduled_dttm, which Airflow sets when it hands the event to the task).
    counted: dict[tuple[int, int, str], int] = {}
    deferred_at: dict[tuple[int, int], float] = {}
    events_file = SOAK_DIR / "events.jsonl"
    for line in events_file.read_text().splitlines() if events_file.exists() else []:
        record = json.loads(line)
        key = (record["map_index"], record["try_number"], record["event"])
        counted[key] = counted.get(key, 0) + 1
        if record["event"] == "defer":
            deferred_at[key[:2]] = max(deferred_at.get(key[:2], 0.0), record["at"])
    not_once, without_wait = {}, []
    for i, row in creates.items():
        last = int(row[3])
        for attempt in range(1, last + 1):
            deferrals = counted.get((i, attempt, "defer"), 0)
            resumes = counted.get((i, attempt, "resume"), 0)
            if resumes > deferrals or (attempt == last and resumes != deferrals):
                not_once[f"{i}/try {attempt}"] = (deferrals, resumes)
        if counted.get((i, last, "defer"), 0) == 0:
            without_wait.append(i)
    if not_once:
        problems.append(f"deferrals that did not resume exactly once (task/try: deferrals, resumes): {not_once}")
    log(f"tasks whose last try re-attached to a batch that had already ended (no wait): {without_wait}")
    bound = POLL + HEALTH_THRESHOLD + HEARTBEAT_SEC
    late = []
    delays = []
    for i, row in creates.items():
        if i in completed_at and row[4] and i not in without_wait:
            # From the batch's end, or from the deferral when the batch ended before the task deferred (a
            # create slowed down by faults): the wait cannot see an end before it starts.
            delay = float(row[4]) - max(completed_at[i], deferred_at.get((i, int(row[3])), 0.0))
            delays.append(delay)
            if delay > bound + 1:  # completed_at has whole seconds
                late.append((i, round(delay, 1)))
    if late:
        problems.append(f"waits that fired later than {bound:g} s after their batch ended: {late[:20]}")
    if delays:
        delays.sort()
        log(
            f"trigger fired after the batch ended: median {delays[len(delays) // 2]:.1f} s, max {delays[-1]:.1f} s "
            f"(bound: poll {POLL:g} + health threshold {HEALTH_THRESHOLD} + heartbeat {HEARTBEAT_SEC} s)"
        )
    if killed:
        log(f"killed triggerer: {killed}")
        if killed.get("held", 0) == 0:
            problems.append("the killed triggerer held no trigger, so no hand-over was exercised")
    summary = (
        f"SOAK tasks={TASKS} succeeded={succeeded} batches={batches} triggerer_kills={triggerer_kills} "
        f"worker_kills={worker_kills} postgres_restarts={postgres_restarts}"
    )
    return summary, problems


if __name__ == "__main__":
    sys.exit(main())
