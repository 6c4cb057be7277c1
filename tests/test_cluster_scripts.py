"""scripts/cluster.sh and scripts/soak.py (make cluster, make soak).

The soak itself runs only with ``OPENAI_BATCH_CLUSTER=1``: it installs Debian packages when missing, starts
PostgreSQL, Redis and a whole Celery cluster, and takes minutes. It runs with a few tasks on ports of its own
and checks the exact summary line and that no process of the cluster is left behind.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "cluster.sh")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "cluster_postgres.sh")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "local_airflow.sh")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "airflow.sh")], check=True)
    subprocess.run([sys.executable, "-m", "py_compile", str(ROOT / "scripts" / "soak.py")], check=True)


def test_every_port_of_the_cluster_is_configurable():
    text = (ROOT / "scripts" / "cluster.sh").read_text()
    for setting in ("CLUSTER_API_PORT", "CLUSTER_PG_PORT", "CLUSTER_REDIS_PORT", "CLUSTER_EMULATOR_PORT"):
        assert f"{setting}:-" in text, setting
    assert "WORKER_LOG_SERVER_PORT" in text and "TRIGGER_LOG_SERVER_PORT" in text
    assert "8080" not in text  # make airflow's default port stays free


@pytest.mark.cluster
@pytest.mark.skipif(os.environ.get("OPENAI_BATCH_CLUSTER") != "1", reason="set OPENAI_BATCH_CLUSTER=1 to run the soak")
def test_soak_on_the_cluster_ends_with_exact_counts():
    home = ROOT / ".airflow" / "cluster-test"
    tasks = int(os.environ.get("SOAK_TASKS", "6"))
    env = {**os.environ, "SOAK_TASKS": str(tasks), "CLUSTER_HOME": str(home), "CLUSTER_PORT_BASE": "18300"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py")], env=env, capture_output=True, text=True, timeout=3600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary == (
        f"SOAK tasks={tasks} succeeded={tasks} batches={tasks} triggerer_kills=1 worker_kills=1 postgres_restarts=1"
    )
    # Nothing of the cluster is left running: no process works in or from its home.
    leftovers = subprocess.run(["pgrep", "-af", str(home)], capture_output=True, text=True).stdout
    assert [line for line in leftovers.splitlines() if "pgrep" not in line] == []
    assert re.search(r"soak took \d+ s", done.stdout)


PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.mark.skipif(
    os.geteuid() != 0 or not PG_BINS,
    reason="PostgreSQL runs as its own user only when the cluster starts as root, and needs Debian's postgresql",
)
def test_postgres_starts_from_a_checkout_only_its_owner_may_enter(tmp_path):
    """A checkout under a 0700 directory (a home directory, ``mktemp -d``): initdb runs as ``postgres``, which
    may not enter it. The cluster's PostgreSQL part (as ``scripts/cluster.sh`` runs it) must still initialise,
    without opening the checkout to anyone."""
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)
    home = private / "checkout" / ".airflow" / "cluster"
    home.mkdir(parents=True)
    pg_root = Path("/tmp") / f"openai-batch-cluster-test-{uuid.uuid4().hex[:12]}"  # where postgres may go
    env = {
        **os.environ,
        "CLUSTER_HOME": str(home),
        "CLUSTER_PG_ROOT": str(pg_root),
        "PG_BIN": str(PG_BINS[-1].parent),
        "PG_PASSWORD": "not-a-secret",
    }
    script = "set -euo pipefail; source scripts/cluster_postgres.sh; postgres_user; postgres_dirs; postgres_init"
    try:
        done = subprocess.run(
            ["bash", "-c", script + '; echo "$PGDATA"'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        pgdata = Path(done.stdout.strip().splitlines()[-1])
        assert (pgdata / "PG_VERSION").is_file()
        owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
        assert owner == "postgres" and stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        assert (home / "pg").resolve() == pgdata.resolve()  # where the data is, from the checkout
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # the checkout was not opened up
    finally:
        shutil.rmtree(pg_root, ignore_errors=True)
