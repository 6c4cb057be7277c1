"""The package's shape: no module too long to read (the emulator, a separate product, aside), and imports that
only run one way (no cycle among the package's modules, counting imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "airflow_provider_openai_batch"
NAME = PACKAGE.name


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "emulator" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports when it runs, at module level or inside functions (a package counts as
    its ``__init__``); imports for type checkers only (``if TYPE_CHECKING:``) do not run."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                package = name.split(".")[: -node.level] if path.name != "__init__.py" else name.split(".")
                base = ".".join([*package, node.module])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def test_no_module_outside_the_emulator_is_over_500_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: lines for name, lines in long.items() if lines > 500} == {}


def test_the_package_has_no_import_cycle():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    # A package's own __init__ importing nothing of its modules is what keeps "pkg" -> "pkg.mod" harmless.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    seen: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        seen[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if seen.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in seen:
                visit(target)
        path.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    assert cycles == []


def test_the_provider_wheel_carries_no_emulator():
    """The emulator is a distribution of its own (emulator/): the provider's wheel packages only the provider,
    which imports nothing of it outside its opt-in test helpers, and has no console script of its own."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [NAME]
    assert "scripts" not in project["project"]
    assert not (PACKAGE / "emulator").exists()
    emulator = tomllib.loads((PACKAGE.parent / "emulator" / "pyproject.toml").read_text())
    assert emulator["project"]["name"] == "openai-batch-emulator"
    assert emulator["project"]["scripts"] == {"openai-batch-emulator": "openai_batch_emulator.__main__:main"}
    importers = sorted(
        name
        for name, path in modules().items()
        if any(
            (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("openai_batch_emulator"))
            or (isinstance(node, ast.Import) and any(a.name.startswith("openai_batch_emulator") for a in node.names))
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert importers == []  # the pytest plugin names the emulator's plugin for pytest to load, it imports nothing
