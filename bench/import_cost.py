"""DAG-parse cost: how much importing our operator and sensor modules adds over ``import airflow.sdk``.

Each measurement is a fresh interpreter that imports ``airflow.sdk`` first and then times only our
modules, which isolates what the provider adds from the (large, noisy) cost of Airflow itself.

    .venv/bin/python bench/import_cost.py --runs 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

BASE = "import airflow.sdk"
OURS = "import airflow_provider_openai_batch.operators.batch, airflow_provider_openai_batch.sensors.batch"


def timed(statement: str, before: str = "pass") -> float:
    code = f"import time; {before}; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    timed(OURS, BASE)  # warm the file-system cache and .pyc files
    base = [timed(BASE) for _ in range(args.runs)]
    added = statistics.median([timed(OURS, BASE) for _ in range(args.runs)])
    print("| import | median (ms) |")
    print("|---|---|")
    print(f"| `import airflow.sdk` (fresh interpreter) | {statistics.median(base) * 1000:.0f} |")
    print(f"| then operators.batch + sensors.batch (what this provider adds) | {added * 1000:.1f} |")
    return 0 if added <= 0.030 else 1


if __name__ == "__main__":
    sys.exit(main())
