"""The code's shape, checked: no private name crosses a module boundary (the import
direction itself is import-linter's contracts in pyproject.toml, run by `make test`), and the
vocabulary is not restated outside workers/vocab.py."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers", "sweeps")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _project_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PACKAGES


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        modules: set[str] = set()  # local names bound to project modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _project_module(node.module):
                for a in node.names:
                    if a.name.startswith("_"):
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports "
                                   f"{node.module}.{a.name}")
                    else:
                        modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if _project_module(a.name):
                        modules.add(a.asname or a.name.split(".")[0])
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} uses "
                           f"{node.value.id}.{node.attr}")
    assert not bad, "private names crossing modules:\n" + "\n".join(bad)


def test_the_vocabulary_is_stated_once():
    """The arch, transform and inference tuples live in workers/vocab.py only."""
    needles = ['("fcn", "lcn", "vec", "gap", "lap4", "lap8")', '("gap", "lap4", "lap8")',
               '"identity", "shared_rotation", "pixel_rotation", "permutation"',
               '("ntk", "nngp", "nn", "nn_plus")', '"nn_plus": {"lr_factor": 8.0']
    hits = [f"{p.relative_to(REPO)}: {n}" for p in SOURCES if p.name != "vocab.py"
            for n in needles if n in p.read_text()]
    assert not hits, hits
