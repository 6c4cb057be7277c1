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
        source = _test_file(current).read_text() if current else ""
        if not re.search(rf"def {name}\b", source):
            missing.append(f"{current}::{name}")
    for path in re.findall(r"`([\w/]+\.py)`", text):
        if path.startswith(("bench/", "tests/")):
            continue
        if not _test_file(path).exists() and not (ROOT / "airflow_provider_openai_batch" / path).exists():
            missing.append(path)
    assert missing == []


def _test_file(path: str) -> Path:
    """A test file as reliability.md names it: under tests/, or the emulator's own under emulator/tests/."""
    if path.startswith("emulator/"):
        return ROOT / "emulator" / "tests" / path.removeprefix("emulator/")
    return ROOT / "tests" / path
