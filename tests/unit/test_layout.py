"""The import graph runs one way, read from the source's AST (nothing is imported to check it).

``inboxflow`` is the composition root; below it the roles, below them the contracts:

    inboxflow -> {streams, sinks, ops, devstack} -> {topics, db} -> schemas

A package may import only the packages listed for it here; nothing imports ``inboxflow``, only
``inboxflow`` imports ``devstack`` or reads the environment.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "topics": {"schemas"},
    "db": {"schemas"},
    "streams": {"schemas", "topics", "db"},
    "sinks": {"schemas", "topics", "db"},
    "ops": {"schemas", "topics"},
    "devstack": {"schemas", "topics", "db"},
    "inboxflow": {"schemas", "topics", "db", "streams", "sinks", "ops", "devstack"},
}
ENVIRONMENT_READERS = ("os.environ", "os.getenv", "BaseSettings")


def _modules(package: str, root: Path = ROOT) -> Iterator[Path]:
    yield from sorted((root / package).rglob("*.py"))


def _imported_packages(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def forbidden_imports(package: str, root: Path = ROOT) -> list[str]:
    """Return ``path:line imports X`` for every import of ours that ``ALLOWED`` forbids."""
    ours = set(ALLOWED)
    found = []
    for path in _modules(package, root):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, imported in _imported_packages(tree):
            if imported in ours and imported != package and imported not in ALLOWED[package]:
                found.append(f"{path.relative_to(root)}:{line} imports {imported}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    assert forbidden_imports(package) == []


def test_every_top_level_package_has_a_place_in_the_graph() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(set(ALLOWED) - {"inboxflow"}))
def test_only_the_application_reads_the_environment(package: str) -> None:
    readers = [
        f"{path.relative_to(ROOT)} uses {name}"
        for path in _modules(package)
        for name in ENVIRONMENT_READERS
        if name in path.read_text(encoding="utf-8")
    ]
    assert readers == []


def test_the_checker_catches_forbidden_imports_in_every_form(tmp_path: Path) -> None:
    module = tmp_path / "sinks" / "stages" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import devstack.kafka\n"
        "from streams.runtime import runner\n"
        "from schemas.errors import RetryClass\n"
        "def late():\n"
        "    from inboxflow.settings import Settings\n"
    )

    assert forbidden_imports("sinks", tmp_path) == [
        "sinks/stages/bad.py:1 imports devstack",
        "sinks/stages/bad.py:2 imports streams",
        "sinks/stages/bad.py:5 imports inboxflow",
    ]


@pytest.mark.parametrize("command", ["worker", "sink", "sync", "dlq"])
def test_production_commands_load_no_dev_stack(command: str) -> None:
    # A fresh interpreter: what resolving the command imports, not what this test session has.
    probe = (
        "import json, sys\n"
        "from inboxflow.cli import cli\n"
        f"cli.get_command(None, {command!r})\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    loaded = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "devstack" not in json.loads(loaded.stdout)


def test_every_command_resolves() -> None:
    from inboxflow.cli import COMMANDS, cli

    names = {name: cli.get_command(None, name) for name in COMMANDS}
    assert {name: getattr(command, "name", None) for name, command in names.items()} == {
        name: name for name in COMMANDS
    }
