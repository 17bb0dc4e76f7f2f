"""The layout is what docs/architecture.md says, and holds the rules lint-imports cannot see."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "batchgen"


def modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}


def listed() -> set[str]:
    """The modules in the folder listing of docs/architecture.md (its first code block)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```\n", 2)[1]
    found: set[str] = set()
    folder = ""
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m or not m.group(2).endswith((".py", "/")):
            continue
        depth, name = len(m.group(1)), m.group(2)
        if name.endswith("/"):
            folder = "" if depth <= 2 and name == "batchgen/" else name
            continue
        found.add(folder + name if depth > 2 else name)
    return found


def test_the_architecture_lists_every_module_and_nothing_else():
    inits = {m for m in modules() if m.endswith("/__init__.py") and m.count("/") == 1}
    # a sub-package's __init__ is listed only where it holds more than a docstring
    assert modules() - inits == listed() - inits


def test_no_module_has_a_module_level_getattr():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "__getattr__" not in names, path


def test_make_lint_checks_the_import_contracts():
    lint = (ROOT / "Makefile").read_text(encoding="utf-8").split("\nlint:", 1)[1].split("\n\n")[0]
    assert "$(BIN)/lint-imports" in lint
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "exclude_type_checking_imports = false" in pyproject
    assert 'type = "layers"' in pyproject and 'type = "acyclic_siblings"' in pyproject
