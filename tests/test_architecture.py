"""The code's shape, checked: no private name crosses a module boundary (the import
direction itself is import-linter's contracts in pyproject.toml, run by `make test`), and the
vocabulary is not restated outside workers/vocab.py."""

from __future__ import annotations

import ast
import textwrap
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


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def restatements(source: str, name: str = "<src>") -> list[str]:
    """Where ``source`` restates workers/vocab.py, read from its AST: a tuple, list or set
    literal of two or more strings equal (as a set) to one of vocab's tuples (ARCHS,
    KERNEL_INFERENCES, ...), or a string equal to a `Status` value (docstrings aside)."""
    from workers import vocab

    named = {n: frozenset(map(str, v)) for n, v in vars(vocab).items()
             if n.isupper() and isinstance(v, tuple) and len(v) >= 2
             and all(isinstance(x, str) for x in v)}
    statuses = {s.value for s in vocab.Status}
    tree = ast.parse(source, name)
    docs = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in statuses and id(node) not in docs:
            out.append(f"{name}:{node.lineno} status {node.value!r} (use vocab.Status)")
        elif (isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) >= 2
              and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                      for e in node.elts)):
            vals = frozenset(e.value for e in node.elts)
            out += [f"{name}:{node.lineno} restates vocab.{n}" for n, v in named.items()
                    if vals == v]
    return sorted(out, key=lambda h: int(h.split(":")[1].split()[0]))


def test_the_vocabulary_is_stated_once():
    """The axes' names, their groups and the status values live in workers/vocab.py only:
    no module restates one of its tuples (in any order) or spells a status."""
    hits = [h for p in SOURCES if p.name != "vocab.py"
            for h in restatements(p.read_text(), str(p.relative_to(REPO)))]
    assert not hits, "\n".join(hits)


def test_the_stated_once_check_sees_reordered_and_spelled_out_restatements():
    src = textwrap.dedent("""
        \"\"\"A docstring may say completed.\"\"\"
        KINDS = ["nngp", "ntk"]
        if row["status"] == "failed":
            pass
        ok = {"gap", "lap8", "lap4"}
        fine = ("ntk", "nn")
    """)
    assert restatements(src) == [
        "<src>:3 restates vocab.KERNEL_INFERENCES", "<src>:4 status 'failed' (use vocab.Status)",
        "<src>:6 restates vocab.FULL_COV_ARCHS"]
