"""scripts/cluster.sh and scripts/soak.py (make cluster, make soak).

The soak itself runs only with ``OPENAI_BATCH_CLUSTER=1``: it installs Debian packages when missing, starts
PostgreSQL, Redis and a whole Celery cluster, and takes minutes. It runs with a few tasks on ports of its own
and checks the exact summary line and that no process of the cluster is left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "cluster.sh")], check=True)
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
