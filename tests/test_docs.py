"""docs/reliability.md names a test behind each promise: every test it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_test_named_in_the_reliability_doc_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    missing = []
    current = None
    for path, name in re.findall(r"`(?:([\w/]+\.py))?::(test_\w+)", text):
        current = path or current  # "`::test_x`" continues the file named before it
        source = (ROOT / "tests" / current).read_text() if current else ""
        if not re.search(rf"def {name}\b", source):
            missing.append(f"{current}::{name}")
    for path in re.findall(r"`([\w/]+\.py)`", text):
        if path.startswith(("bench/", "tests/")):
            continue
        if not (ROOT / "tests" / path).exists() and not (ROOT / "airflow_provider_openai_batch" / path).exists():
            missing.append(path)
    assert missing == []
