"""CLI help that reads as prose (issue 29 item 6): every command's `--help`, and the command
lists of `symsweep --help` and `symsweep data --help`, rendered at 80 and 120 columns, with no
ragged line (a line broken where the next word would still have fitted: a hard line break of a
docstring kept by the help formatter) and no text cut off with an ellipsis."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BOX = "│┃║"  # rich's panel borders


def _commands(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, groups included (() is `symsweep` itself); typer
    0.29 vendors click, so a group is what has sub-commands."""
    out = [path]
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def ragged_lines(text: str) -> list[str]:
    """Lines of rendered help broken too early: for each line that continues the cell (or
    paragraph) of the line above (text starting at a column where the line above has text,
    blank before it), the first word of the continuation would have fitted at the end of the
    line above, within the cell's width (to the panel's border or the line's end, less one
    column of padding). Items typer puts on a line of their own ([default: ...], [env var:
    ...], [required]) are not continuations."""
    bad = []
    lines = [ANSI.sub("", ln).rstrip("\n") for ln in text.splitlines()]
    first_cell = _first_cells(lines)
    for i, (a, b) in enumerate(zip(lines, lines[1:], strict=False)):
        ia, ib = _inner(a), _inner(b)
        if ia is None or ib is None or not ib.strip() or not ia.strip():
            continue
        c = len(ib) - len(ib.lstrip(" "))
        if c >= len(ia) or ia[c] == " " or (c > 0 and ia[c - 1] != " "):
            continue  # b does not continue the text of a at the same column
        if _in_panel(b) and c <= first_cell[i + 1] + 4:
            continue  # a panel's next row, not a cell's next line: it starts in the first
            # cell (a command's name) or just after typer's "*" (required) column
        word = ib[c:].split(" ", 1)[0]
        if word.startswith("["):
            continue
        width = len(ia) - c - 1  # the cell runs to the border, less its padding
        if len(ia[c:].rstrip()) + 1 + len(word) <= width:
            bad.append(f"{a.rstrip()!r}\n    then {b.rstrip()!r}")
    return bad


def _first_cells(lines: list[str]) -> list[int]:
    """For each line in a panel, the column where the panel's rows start (their first cell:
    the smallest indent of the panel's lines); -1 outside panels."""
    out = [-1] * len(lines)
    i = 0
    while i < len(lines):
        if not lines[i].startswith("╭"):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and _in_panel(lines[j]):
            j += 1
        inner = [t for t in (_inner(ln) for ln in lines[i + 1:j]) if t and t.strip()]
        col0 = min((len(t) - len(t.lstrip(" ")) for t in inner), default=0)
        out[i + 1:j] = [col0] * (j - i - 1)
        i = j
    return out


def _in_panel(line: str) -> bool:
    return line[:1] in BOX and line[:1] != ""


def _inner(line: str) -> str | None:
    """A line's text inside a panel's borders (the line itself outside panels); None for a
    panel's top or bottom edge."""
    s = line.rstrip()
    if s[:1] in "╭╰" and s:
        return None
    if _in_panel(s):
        end = max(s.rfind(ch) for ch in BOX)
        return s[1:end] if end > 0 else s[1:]
    return line.ljust(max(len(line), 1))


def test_the_check_sees_a_ragged_line_and_passes_wrapped_prose():
    width = 40
    good = "\n".join([" The quick brown fox jumps over the   ".ljust(width),
                      " lazy dog and runs far away.".ljust(width)])
    bad = "\n".join([" The quick brown fox".ljust(width), " jumps over the lazy dog.".ljust(width)])
    assert ragged_lines(good) == [] and len(ragged_lines(bad)) == 1
    panel = "\n".join(["╭─ Commands " + "─" * 27 + "╮",
                       "│ plan  Projected compute per figure / │",
                       "│       column and wall time on N GPUs │",
                       "│       from unit costs                │",
                       "│       measured on this machine.      │",
                       "╰" + "─" * 38 + "╯"])
    (hit,) = ragged_lines(panel)
    assert "from unit costs" in hit and "measured" in hit


@pytest.mark.parametrize("columns", [80, 120])
def test_every_help_reads_as_prose(columns):
    runner = CliRunner()
    problems = []
    for path in COMMANDS:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(columns),
                                                        "TERMINAL_WIDTH": str(columns)})
        name = " ".join(("symsweep", *path))
        assert res.exit_code == 0, (name, res.output)
        out = ANSI.sub("", res.output)
        problems += [f"{name} --help: {p}" for p in ragged_lines(out)]
        problems += [f"{name} --help: cut off: {ln.rstrip()!r}" for ln in out.splitlines()
                     if "…" in ln]
        assert max(len(ln) for ln in out.splitlines()) <= columns, (name, out)
    assert not problems, "\n".join(problems)


def test_every_command_has_a_one_line_summary():
    """The command lists show a command's first paragraph: one line of prose ending in a
    full stop, short enough (66 characters) for one line of the list at 80 columns."""
    for path in COMMANDS:
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        summary = (cmd.help or "").strip().split("\n\n")[0]
        assert "\n" not in summary and summary.endswith(".") and (
            len(summary) <= 66 or not path), (
            path, summary)
