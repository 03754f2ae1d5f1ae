"""What every figure module shares: loading the latest attempt per trial through the one
result loader (`orchestrator.store.Store.load_finished`) and adding the columns the figures
need (`enrich`: ok, m, flip, path_t, first_layer_init, predictions_path, config), the labels
the tables print, the cell format, and the matplotlib plumbing (Agg backend, log-log axes,
writing the file).

A run is *successful* (`orchestrator.analysis.successful`): a kernel cell when it completed,
a finite network when its best training accuracy reached the preset's ``success_train_acc``
(0.95 in the paper, Sec. 3 and App. B.1), whatever its final status.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import success_threshold, successful
from workers.cifar10 import NUM_CLASSES
from workers.errors import ConfigError
from workers.vocab import KERNEL_INFERENCES

LABELS = {"ntk": "NTK", "nngp": "NNGP", "nn": "NN", "nn_plus": "NN+"}
SHORT_T = {"identity": "identity", "shared_rotation": "shared rot", "pixel_rotation": "pixel rot",
           "permutation": "permutation", "global_rotation": "global rot"}
ARCH_LABEL = {"fcn": "FCN", "lcn": "LCN", "vec": "VEC", "gap": "GAP", "lap4": "LAP4",
              "lap8": "LAP8"}


def _loads(s: Any, bad: list | None = None) -> dict:
    """A row's JSON column as a dict ({} when empty); a value that does not parse is {} and
    is appended to ``bad`` for the caller to report."""
    try:
        return json.loads(s) if isinstance(s, str) and s else {}
    except ValueError as ex:
        if bad is not None:
            bad.append(ex)
        return {}


def _loads_column(d: pd.DataFrame, col: str, consequence: str) -> list[dict]:
    """`_loads` over a column; unparsable values are said loudly (one warning per column)."""
    bad: list = []
    out, ids = [], []
    tids = d["trial_id"] if "trial_id" in d else pd.Series([None] * len(d))
    for s, tid in zip(d.get(col, pd.Series([None] * len(d))), tids, strict=True):
        n = len(bad)
        out.append(_loads(s, bad))
        if len(bad) > n:
            ids.append(tid)
    if bad:
        ids = ids[:3]
        logging.getLogger("symsweep").warning(
            "%d row(s) have a %s that does not parse (%s; e.g. trials %s): %s", len(bad), col,
            bad[0], ", ".join(map(str, ids)), consequence)
    return out


def enrich(df: pd.DataFrame, success_train_acc: float) -> pd.DataFrame:
    """Add the columns the figures need: ok (successful run), m (training-set size, flips
    counted), flip, path_t, first_layer_init, predictions_path, config (dict)."""
    d = df.copy()
    cfgs = _loads_column(d, "config_json", "their flip, path_t and first-layer init are taken "
                         "as the defaults and m from the row's train_size")
    mets = _loads_column(d, "metrics_json", "their predictions are not found")
    d["config"] = cfgs
    d["flip"] = [bool(c.get("flip", False)) for c in cfgs]
    d["path_t"] = [float(c["path_t"]) if c.get("path_t") is not None else math.nan
                   for c in cfgs]
    d["first_layer_init"] = [c.get("first_layer_init") or "gaussian" for c in cfgs]
    ts = []
    for c, row_ts in zip(cfgs, d["train_size"], strict=True):
        if c.get("train_size") is not None:
            ts.append(float(c["train_size"]) * (2.0 if c.get("flip") else 1.0))
        else:
            ts.append(float(row_ts) if row_ts is not None and not pd.isna(row_ts) else math.nan)
    d["m"] = ts
    d["predictions_path"] = [m.get("predictions_path") for m in mets]
    d["ok"] = successful(d, success_train_acc).to_numpy() if len(d) else []
    return d


def load(sweep: str, results: str) -> tuple[pd.DataFrame, dict]:
    """(enriched latest-attempt rows, manifest) of a sweep; `ConfigError` when absent."""
    from orchestrator.store import Store

    df, m = Store(results, sweep).load_finished()
    return enrich(df, success_threshold(m)), m


def agg(vals: np.ndarray) -> tuple[float, float, int]:
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def order(values: Sequence[Any], reference: Sequence[Any]) -> list[Any]:
    return [r for r in reference if r in set(values)]


FORMATS = ("png", "pdf", "svg")  # every figure is written in all three (issue 15 item 5)
PNG_DPI = 200  # raster copy for slides and quick looks; the PDF / SVG are the paper's

# Paper notation (Sec. 3; PAPER_SETUP.md "D"): the transform's group, then in words
TRANSFORM_LABEL = {"identity": "$I_{3d}$ (identity)",
                   "shared_rotation": r"$O(3)\otimes I_d$ (shared rotation)",
                   "pixel_rotation": "$O(3)^d$ (pixel rotation)",
                   "permutation": "$P(3d)$ (permutation)",
                   "global_rotation": "$O(3d)$ (global rotation)"}
# Result columns as axis names: (label, factor applied to the stored value, is an accuracy)
METRIC_LABEL: dict[str, tuple[str, float, bool]] = {
    "best_test_acc": ("Test accuracy (%)", 100.0, True),
    "test_acc": ("Final test accuracy (%)", 100.0, True),
    "val_acc": ("Validation accuracy (%)", 100.0, True),
    "train_acc": ("Training accuracy (%)", 100.0, True),
    "best_train_acc": ("Best training accuracy (%)", 100.0, True),
    "test_mse": ("Test MSE", 1.0, False),
    # kernel cells that chose diag_reg on validation: the test accuracy at the fixed diag_reg
    "fixed_reg_test_acc": ("Test accuracy at the fixed diag_reg (%)", 100.0, True),
    "fixed_reg_test_mse": ("Test MSE at the fixed diag_reg", 1.0, False),
}
# Chance accuracy per dataset: 1 / classes. The synthetic stand-in draws its labels from
# CIFAR-10's classes (workers/synthetic.py). A dataset not listed gets no chance line.
CHANCE_ACCURACY = {"cifar10": 1.0 / NUM_CLASSES, "synthetic": 1.0 / NUM_CLASSES}


# Units of the non-accuracy result columns, for table headers (accuracies are in %)
METRIC_UNIT = {"test_mse": "MSE, mean((f-y)^2)", "wall_s": "seconds", "steps": "SGD steps",
               "start_step": "SGD steps", "eta0": "learning rate eta_0"}


def metric_unit(metric: str) -> str:
    """How a table states ``metric``'s values: "%" for an accuracy, else its unit."""
    return "%" if metric_label(metric)[2] else METRIC_UNIT.get(metric, "as stored")


def metric_label(metric: str) -> tuple[str, float, bool]:
    """(axis label, factor, is accuracy) of a result column; unknown columns as they are."""
    return METRIC_LABEL.get(metric, (metric, 1.0, False))


def arch_label(arch: str, inference: str) -> str:
    r"""The paper's name of a model: VEC$_n$ for a finite network, VEC$_\infty$ for a kernel."""
    sub = r"\infty" if inference in KERNEL_INFERENCES else "n"
    return f"{ARCH_LABEL.get(arch, arch)}$_{{{sub}}}$"


def figure_name(sweep: str) -> str:
    """'fig2' -> 'Fig. 2', 'figS5' -> 'Fig. S5'; any other sweep name as it is."""
    return f"Fig. {sweep[3:]}" if sweep.startswith("fig") and len(sweep) > 3 else sweep


def title(sweep: str, m: Mapping[str, Any], what: str) -> str:
    """A figure's title: 'Fig. 2: <what> (smoke preset)'. No brackets: a title is printed as
    it is, never through rich markup (which ate '[smoke]', issue 15 item 4)."""
    return f"{figure_name(sweep)}: {what} ({m.get('preset')} preset)"


def chance_accuracy(df: pd.DataFrame) -> float | None:
    """Chance-level accuracy (a fraction) of the rows' dataset; None when the rows mix
    datasets of different chance or the dataset is not in `CHANCE_ACCURACY`."""
    if "dataset" not in df or not len(df):
        return None
    levels = {CHANCE_ACCURACY.get(d) for d in df["dataset"].dropna().unique()}
    return levels.pop() if len(levels) == 1 else None


def draw_chance(ax: Any, level: float | None, *, horizontal: bool = True,
                label: str | None = None, unit: str = "%") -> None:
    """A dotted line at chance level (in the axis' units, e.g. 10 for 10%; ``unit`` follows
    the number in the default label), labelled for the legend; gid 'chance' so tests and later
    edits can find it. Nothing for ``level`` None (a dataset without a known chance)."""
    if level is None:
        return
    from orchestrator.figures.palette import CHANCE_COLOR

    line = (ax.axhline if horizontal else ax.axvline)(
        level, color=CHANCE_COLOR, ls=":", lw=1.0, zorder=0.5,
        label=label or f"chance ({level:g}{unit})")
    line.set_gid("chance")


def chance_handles(ax: Any) -> list[Any]:
    """The legend handle of ``ax``'s chance line (a list of at most one)."""
    return [h for h in ax.get_legend_handles_labels()[0]
            if getattr(h, "get_gid", lambda: None)() == "chance"][:1]


def derived_keys(df: pd.DataFrame, keys: Sequence[str]) -> set[tuple]:
    """The groups (values of ``keys``) whose every row was copied from an equal cell rather
    than computed (``derived_from`` set: Theorem 4.1 dedupe, README "Running sweeps")."""
    if "derived_from" not in df or not len(df):
        return set()
    d = df["derived_from"].fillna("").astype(str).ne("")
    g = d.groupby([df[k] for k in keys], sort=False).all()
    return {k if isinstance(k, tuple) else (k,) for k, v in g.items() if v}


def draw_points(ax: Any, x: Any, y: Any, *, color: str, marker: str = "o", ls: Any = "-",
                derived: Any = None, label: str | None = None, lw: float = 1.4,
                ms: float = 4.0) -> None:
    """One series: a line through every point, computed points with filled markers, derived
    ones (bool mask ``derived``, copied by Theorem 4.1) hollow: white face, gid 'derived'."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    d = np.zeros(len(x), dtype=bool) if derived is None else np.asarray(derived, dtype=bool)
    ax.plot(x, y, ls=ls, lw=lw, color=color, marker=marker, ms=ms,
            markevery=[int(i) for i in np.flatnonzero(~d)], label=label)
    if d.any():
        pts, = ax.plot(x[d], y[d], ls="none", marker=marker, ms=ms, color=color,
                       markerfacecolor="white", markeredgewidth=1.0)
        pts.set_gid("derived")


def derived_handle() -> Any:
    """The legend entry of derived (hollow) points."""
    from matplotlib.lines import Line2D

    from orchestrator.figures.palette import DERIVED_LABEL, KEY_COLOR

    h = Line2D([], [], ls="none", marker="o", ms=4, color=KEY_COLOR,
               markerfacecolor="white", label=DERIVED_LABEL)
    h.set_gid("derived")
    return h


def has_derived(ax: Any) -> bool:
    """Whether anything drawn on ``ax`` is marked derived."""
    return any(a.get_gid() == "derived" for a in ax.get_children())


def outputs(out: str | Path) -> list[str]:
    """The files a figure written to ``out`` becomes: ``out`` itself, then its siblings in the
    other `FORMATS`, as strings (a local path, or an s3:// / gs:// URI kept intact, since
    pathlib would fold its '//'). ConfigError when ``out`` does not end in one of them."""
    scheme, sep, rest = str(out).partition("://") if "://" in str(out) else ("", "", str(out))
    p = PurePosixPath(rest)
    fmt = p.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--out {out}: name a .png, .pdf or .svg file (the other two "
                          "formats are written next to it)")
    sibs = [p.with_suffix(f".{f}") for f in FORMATS if f != fmt]
    return [str(out)] + [f"{scheme}{sep}{q}" for q in sibs]


def savefig(fig: Any, out: str | Path) -> Path | str:
    """Write ``fig`` to every file of `outputs(out)` (PNG at `PNG_DPI`, PDF and SVG vector),
    each atomically through the results root's filesystem (`orchestrator.fsio.write_atomic`:
    a reader never sees half a figure; s3:// and gs:// work too); close it and return ``out``:
    a Path, or the URI string as given (Path would fold its '//')."""
    import matplotlib.pyplot as plt

    from orchestrator.fsio import resolve_root, write_atomic

    paths = outputs(out)
    try:
        for p in paths:
            fmt = p.rsplit(".", 1)[1].lower()
            buf = io.BytesIO()
            # no creation date in the vector files: the same results give the same bytes
            meta = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
            fig.savefig(buf, format=fmt, dpi=PNG_DPI, metadata=meta)
            fs, path = resolve_root(p)
            try:
                write_atomic(fs, path, buf.getvalue())
            except OSError as ex:  # a user-named path: say which and how to fix, exit 2
                reason = os.strerror(ex.errno) if ex.errno else " ".join(str(ex).split())
                raise ConfigError(f"cannot write --out {p}: {reason}; pass a writable file "
                                  "path") from ex
    finally:
        plt.close(fig)
    return str(out) if "://" in str(out) else Path(out)


def finish(fig: Any, out: str | Path, heading: str = "", handles: Sequence[Any] = (),
           ncol: int = 4, legend_title: str | None = None) -> Path | str:
    """The end every figure shares: one legend of ``handles`` centred under the panels (the
    tight bounding box takes it in), the title, a tight layout, and `savefig`."""
    if handles:
        fig.legend(handles=list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(handles), ncol), title=legend_title)
    if heading:
        fig.suptitle(heading)
    fig.tight_layout()
    return savefig(fig, out)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend with the figures' shared style: small
    type for a two-column paper, no top/right spines, TrueType fonts in PDFs (editable text),
    tight bounding boxes, deterministic SVG ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 10,
        "axes.spines.top": False, "axes.spines.right": False,
        "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight",
        "svg.hashsalt": "symsweep", "legend.frameon": False,
    })
    return plt


def loglog(ax: Any) -> None:
    """Log-log axes with plain tick labels (`plain_log_labels`); call after drawing."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_labels(ax.xaxis, *ax.get_xlim())
    plain_log_labels(ax.yaxis, *ax.get_ylim())


def plain_log_labels(axis: Any, lo: float, hi: float) -> None:
    """Tick labels of a log axis spanning [lo, hi] as plain numbers ("0.6", "100", not
    6x10^-1): major ticks labelled; minor ticks labelled too when the span is short (under a
    factor 3: every one; under 30: those at 2, 3 and 5 times a power of ten), else left bare
    (their labels would overlap)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    span = hi / lo if lo > 0 else math.inf

    def minor(v: float, _: Any) -> str:
        mant = round(v / 10 ** math.floor(math.log10(v)), 6)
        return f"{v:g}" if span < 3 or mant in (2.0, 3.0, 5.0) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor) if span < 30 else NullFormatter())


def format_cell(mean: float, std: float, n: int, total: int, percent: bool = True,
                not_completed: int = 0) -> str:
    """'mean ± std (n/total)' of a table cell: an accuracy (``percent``) x100 with one
    decimal, any other metric as stored with 4 significant digits (seconds, steps, MSE).
    ``not_completed``: how many of the n successes then diverged or failed, said in the
    counts ('(5/5, 1 diverged/failed)')."""
    counts = f"{n}/{total}" + (f", {not_completed} diverged/failed" if not_completed else "")
    if n == 0:
        return f"- ({counts})"
    if percent:
        m, s = f"{mean * 100:.1f}", f"{std * 100:.1f}"
    else:
        m, s = f"{mean:.4g}", f"{std:.4g}"
    if n == 1:
        return f"{m} ({counts})"
    return f"{m} ± {s} ({counts})"
