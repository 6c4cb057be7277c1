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


README_SECTIONS = [
    "Quickstart",
    "Install and connect",
    "Which operator when",
    "Large jobs",
    "Results",
    "Retries and kills",
    "Azure OpenAI and compatible back ends",
    "In the Airflow UI",
    "In production",
    "The emulator",
    "Performance",
]


def test_the_readme_is_short_in_its_order_and_links_every_docs_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 220
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings[: len(README_SECTIONS)] == README_SECTIONS
    # The two set-up commands come before the first section, the quickstart DAG is under 30 lines.
    assert text.index("make demo") < text.index("make test") < text.index("## Quickstart")
    quickstart = text.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "@task.openai_batch" in quickstart
    assert len(quickstart.strip().splitlines()) < 30
    pages = sorted(page.name for page in (ROOT / "docs").glob("*.md"))
    assert pages, "no docs pages found"
    assert [page for page in pages if f"docs/{page}" not in text] == []


def test_no_user_doc_docstring_or_test_name_mentions_an_issue_number():
    mention = re.compile(r"\b[Ii]ssues? #?\d+|(?<![\w&/])#\d{1,4}\b")
    files = [ROOT / "README.md", ROOT / "emulator" / "README.md", ROOT / "bench" / "README.md"]
    files += list((ROOT / "docs").glob("*.md"))
    for tree in ("airflow_provider_openai_batch", "emulator", "tests", "example_dags", "bench"):
        files += [path for path in (ROOT / tree).rglob("*.py") if ".venv" not in path.parts]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if mention.search(line)
    ]
    assert found == []
