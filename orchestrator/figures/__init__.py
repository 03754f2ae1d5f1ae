"""The paper's tables and figures from the results store, one module per figure, behind one
registry that ``symsweep table NAME`` / ``symsweep plot NAME`` dispatch through.

- `fig2`: test accuracy per (inference, arch, transform) cell (Sec. 4, Fig. 2); also the
  table of any sweep without a figure of its own (`figure_of`).
- `fig3`: VEC_n accuracy against width with the VEC_inf level (Fig. 3).
- `fig4`: learning curves with power-law fits (Fig. 4).
- `fig5`: ImageNet learning curves with power-law fits, and the ResNet-depth scatter
  (Fig. 5, Fig. 4 right).
- `figS1`: ensembles along the rotation path, S-Dist to GAP_n and VEC_inf (Fig. S1).
- `figS4`: ImageNet accuracy against epoch under identity, O(3)^d, P(3d) (Fig. S4).
- `figS5`: Gaussian vs uniform first-layer initialisation (Fig. S5).
- `figS6`: NTK scaling-law exponents (Fig. S6).
- `curves`: the learning curve of one trial (``symsweep plot TRIAL_ID``), from its history.
- `palette`: one colour per arch, transform and inference, shared by every figure.
- `common`: what they share: `load` (the one result loader, `Store.load_finished`, plus the
  columns figures need), labels, cell format, matplotlib plumbing.

Adding a figure is one new module and one registry line: write ``orchestrator/figures/figN.py``
with

    def table(df, m, fmt="text", **opts) -> str: ...     # text or csv
    def plot(df, m, out, **opts) -> Path: ...            # writes ``out``, returns it

where ``df`` is `common.load`'s frame (latest attempt per trial, enriched), ``m`` the sweep's
manifest and ``opts`` the command-line options (``sweep``, ``metric``, ``first``, ``last``,
``results``; take what you need, accept the rest with ``**_``), then add
``"figN": Figure(figN.table, figN.plot),`` to `FIGURES` below. The sweep file
``sweeps/figN.py`` names the sweep, so the name is the key.

A figure's sweep file may combine parts with different axes (`orchestrator.spec.CompositeSweep`:
finite nets over widths plus one kernel level; several learning-curve triplets) under one name
and store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.figures import fig2, fig3, fig4, fig5, figS1, figS4, figS5, figS6
from orchestrator.figures.common import enrich, load, outputs
from orchestrator.figures.curves import trial_curves
from orchestrator.figures.fig3 import fig3_cells
from orchestrator.figures.fig4 import curve_fits, curve_points
from orchestrator.figures.figS1 import figS1_cells
from orchestrator.figures.figS5 import figS5_cells
from orchestrator.layout import ResultsLayout
from orchestrator.results import NoSuchTrial
from workers.errors import ConfigError


@dataclass(frozen=True)
class Figure:
    """A figure's two entry points: ``table(df, m, fmt, **opts) -> str`` and
    ``plot(df, m, out, **opts) -> Path`` (see the module docstring)."""

    table: Callable[..., str]
    plot: Callable[..., Path]


FIGURES: dict[str, Figure] = {
    "fig2": Figure(fig2.table, fig2.plot),
    "fig3": Figure(fig3.fig3_table, fig3.fig3_plot),
    "fig4": Figure(fig4.curves_table, fig4.curves_plot),
    "fig5": Figure(fig5.table, fig5.plot),
    "figS4": Figure(figS4.table, figS4.plot),
    "figS1": Figure(figS1.figS1_table, figS1.figS1_plot),
    "figS5": Figure(figS5.figS5_table, figS5.figS5_plot),
    "figS6": Figure(figS6.figS6_table, figS6.figS6_plot),
}


def figure_of(sweep: str) -> Figure:
    """The registered figure of a sweep; a sweep without one (e.g. a custom sweep file) gets
    the Fig. 2 table and plot, cells per (inference, arch, transform)."""
    return FIGURES.get(sweep, FIGURES["fig2"])


def figure_table(sweep: str, results: str = "results", *, fmt: str = "text",
                 metric: str = "best_test_acc", first: int | None = None,
                 last: int | None = None) -> str:
    """The table of a sweep's figure from the results (text or csv). ConfigError for a bad
    format, an absent sweep or one without finished trials."""
    if fmt not in ("text", "csv"):
        raise ConfigError(f"--format {fmt!r}: choose text or csv")
    df, m = load(sweep, results)
    return figure_of(sweep).table(df, m, fmt=fmt, sweep=sweep, metric=metric, first=first,
                                  last=last, results=results)


def figure_plot(sweep: str, results: str = "results", out: str | Path | None = None, *,
                metric: str = "best_test_acc", first: int | None = None,
                last: int | None = None) -> Path:
    """Write the figure of a sweep (default <results>/<sweep>/<sweep>.png, and the PDF and SVG
    next to it: `common.outputs`); returns the path of ``out``. ConfigError for an ``out``
    that is not .png / .pdf / .svg (before anything is read) or an absent sweep."""
    if out is not None:
        outputs(out)
    df, m = load(sweep, results)
    path = out or ResultsLayout(results, sweep).figure()
    return figure_of(sweep).plot(df, m, path, sweep=sweep, metric=metric, first=first,
                                 last=last, results=results)


def plot_any(name: str | None, results: str = "results", out: str | Path | None = None, *,
             curves: str | None = None, metric: str = "best_test_acc",
             first: int | None = None, last: int | None = None) -> Path:
    """What ``symsweep plot NAME [--curves TRIAL_ID]`` draws: with ``curves``, that trial's
    learning curve (searched in sweep ``name``, or every sweep when ``name`` is None); else
    the figure of sweep ``name`` (default fig2) when there is one under ``results``, else the
    learning curve of trial ``name``. ConfigError (one line) when it is neither."""
    from orchestrator.store import list_sweeps

    if curves is not None:
        return trial_curves(results, curves, sweep=name, out=out)
    name = name or "fig2"
    have = list_sweeps(results)
    if name in have:
        return figure_plot(name, results, out, metric=metric, first=first, last=last)
    try:
        return trial_curves(results, name, out=out)
    except NoSuchTrial as ex:
        raise ConfigError(f"{name!r} is neither a sweep under {results} (found: "
                          f"{', '.join(have) or 'none'}) nor a trial there; `symsweep query "
                          f"\"select trial_id from trials\" --results {results}` lists the "
                          "trial ids") from ex


__all__ = ["FIGURES", "Figure", "curve_fits", "curve_points", "enrich", "fig3_cells",
           "figS1_cells", "figS5_cells", "figure_of", "figure_plot", "figure_table", "load",
           "plot_any", "trial_curves"]
