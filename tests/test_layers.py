"""The library's tiers, read from its import statements (ast), so that a lower tier never imports a higher one.

From the bottom up, as CompressAI layers ``layers`` / ``entropy_models`` under ``models``:

* the floor, ``utils/{errors,cli,device,image_io,padding,metrics}.py``: leaf helpers;
* the components, ``models``, ``datasets``, ``losses``: each may use the floor, none another component;
* the pipeline, ``utils/coding`` (may use the components), ``utils/training`` and ``utils/evaluation``
  (may use coding, never each other);
* the commands (scripts, ``tools/``, ``benchmarks/``), which nothing in the library imports.

Every import counts, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent

FLOOR = "floor"
# Which groups each group may import (itself always included).
ALLOWED: Dict[str, Set[str]] = {
    FLOOR: set(),
    "models": {FLOOR},
    "datasets": {FLOOR},
    "losses": {FLOOR},
    "coding": {FLOOR, "models"},
    "training": {FLOOR, "models", "datasets", "losses"},
    "evaluation": {FLOOR, "models", "datasets", "losses", "coding"},
}
LIBRARY = ("utils", "models", "datasets", "losses")
COMMANDS = ("tools", "benchmarks", "train", "eval", "test", "codec", "demo")


def group_of(module: str) -> Optional[str]:
    """The tier group of a dotted module name of this repository, or None for anything else."""
    parts = module.split(".")
    if parts[0] in ("models", "datasets", "losses"):
        return parts[0]
    if parts[0] == "utils":
        if len(parts) > 1 and parts[1] in ("coding", "training", "evaluation"):
            return parts[1]
        return FLOOR
    if parts[0] in COMMANDS:
        return "commands"
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) for every import in ``module``'s source, relative imports resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            parent = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, parent
            for alias in node.names:  # "from utils import coding" imports utils.coding
                yield node.lineno, f"{parent}.{alias.name}"


def violations(source: str, module: str, is_package: bool = False) -> List[str]:
    """The imports of ``module`` that reach a tier it may not use."""
    group = group_of(module)
    found = []
    for line, imported in imported_modules(source, module, is_package):
        target = group_of(imported)
        if target is not None and target != group and target not in ALLOWED[group]:
            found.append(f"{module}:{line} ({group}) imports {imported} ({target})")
    return found


def test_no_lower_tier_imports_a_higher_one():
    found = []
    for top in LIBRARY:
        for path in sorted((ROOT / top).rglob("*.py")):
            found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize("module, source", [
    ("utils.padding", "from utils.training.state import TrainState\n"),
    ("utils.metrics", "def f():\n    from .coding import codec\n"),
    ("models.icwem", "import datasets\n"),
    ("utils.coding.codec", "from ..evaluation.measure import measure_image\n"),
    ("utils.training.loop", "from ..evaluation import measure\n"),
    ("utils.evaluation.measure", "from tools.demo_steps import run_demo\n"),
])
def test_an_upward_import_is_reported(module, source):
    """The check is not vacuous: each planted upward import, lazy ones too, is found."""
    assert violations(source, module) != []


def test_downward_and_outside_imports_pass():
    source = "import torch\nfrom ..errors import UserError\nfrom models import ICWEM\nfrom datasets import ImageFolder\n"
    assert violations(source, "utils.training.loop") == []
