"""Tables and plots of the figures beyond Fig. 2: fig3, fig4, figS1, figS5, figS6.

`FIGURES` maps a sweep name to its table and plot; ``symsweep table <fig>`` /
``symsweep plot <fig>`` call `figure_table` / `figure_plot`. Every function reads the latest
attempt per trial from the results store; finite runs count when they succeeded (completed and
best training accuracy >= the preset's ``success_train_acc``, as in Fig. 2).

- fig3: VEC_n best test accuracy against width (mean ± std over successful seeds) per
  inference (NN, NN+) and transform, with the VEC_inf NTK level.
- fig4 / figS6: learning curves: test error (1 - best test accuracy) and test MSE against the
  training-set size m (m counts left-right flips), power-law fits over the first / last points
  (`orchestrator.fits.segment_fits`; lengths from the sweep file's ``analysis`` or the command
  line) with R^2 and the slope's standard error.
- figS1: along the rotation path tau_t, per width n: ensemble accuracy of VEC_n^tau_t,
  S-Dist(VEC_n^tau_t, GAP_n) and S-Dist(VEC_n^tau_t, VEC_inf) from the stored per-trial test
  predictions, the ensemble mean over initialisations taken before the distance.
- figS5: Gaussian vs uniform first-layer initialisation per (arch, transform).

A figure's sweep file may combine parts with different axes (`orchestrator.spec.CompositeSweep`:
finite nets over widths plus one kernel level; several learning-curve triplets) under one name
and store.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import LABELS, SHORT_T, format_cell, success_threshold, successful
from orchestrator.fits import PowerLawFit, ensemble_accuracy, ensemble_mse, s_dist, segment_fits
from workers.errors import ConfigError, DataError
from workers.vocab import ARCHS, INFERENCES, TRANSFORMS

ARCH_LABEL = {"fcn": "FCN", "lcn": "LCN", "vec": "VEC", "gap": "GAP", "lap4": "LAP4",
              "lap8": "LAP8"}


# ====================================================================== composite sweeps
# ====================================================================== loading
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


def _agg(vals: np.ndarray) -> tuple[float, float, int]:
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _order(values: Sequence[Any], reference: Sequence[Any]) -> list[Any]:
    return [r for r in reference if r in set(values)]


def _savefig(fig: Any, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loglog(ax: Any) -> None:
    """Log-log axes with labels on the major (decade) ticks only (minor labels overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _title(sweep: str, m: Mapping[str, Any], what: str) -> str:
    return f"{sweep} [{m.get('preset')}]: {what}"


# ====================================================================== fig3
def fig3_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (inference, transform, width): mean, std, n_success, n_finished of
    best_test_acc (width NaN for kernel cells)."""
    rows = []
    for (inf, tr, w), g in df.groupby(["inference", "transform", df["width"].fillna(-1)],
                                      sort=False):
        mean, std, n = _agg(g.loc[g["ok"], "best_test_acc"])
        rows.append((inf, tr, None if w == -1 else int(w), mean, std, n, len(g)))
    cells = pd.DataFrame(rows, columns=["inference", "transform", "width", "mean", "std",
                                       "n_success", "n_finished"])
    key = cells["inference"].map({k: i for i, k in enumerate(INFERENCES)}) * 1e9 + \
        cells["transform"].map({k: i for i, k in enumerate(TRANSFORMS)}) * 1e6 + \
        cells["width"].fillna(0).astype(float)
    return cells.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def fig3_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text", **_: Any) -> str:
    cells = fig3_cells(df)
    if fmt == "csv":
        return cells.to_csv(index=False)
    out = io.StringIO()
    out.write(f"fig3 [{m.get('preset')}]: VEC best test accuracy in % against width, mean ± std "
              "over successful runs (successful/finished)\n")
    widths = sorted(int(w) for w in cells["width"].dropna().unique())
    for tr in _order(cells["transform"].unique(), TRANSFORMS):
        sub = cells[cells["transform"] == tr]
        out.write(f"\n{SHORT_T[tr]}\n")
        tab = {}
        for inf in _order(sub["inference"].unique(), INFERENCES):
            s = sub[sub["inference"] == inf]
            if s["width"].isna().all():
                r = s.iloc[0]
                tab[f"{LABELS[inf]} (VEC_inf)"] = {"level": format_cell(
                    r["mean"], r["std"], r["n_success"], r["n_finished"])}
                continue
            tab[LABELS[inf]] = {f"n={int(r.width)}": format_cell(r.mean, r.std, r.n_success,
                                                                 r.n_finished)
                                for r in s.itertuples()}
        frame = pd.DataFrame(tab).T
        cols = [c for c in [f"n={w}" for w in widths] + ["level"] if c in frame.columns]
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            out.write(frame[cols].fillna("").to_string() + "\n")
    return out.getvalue()


def fig3_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, **_: Any) -> Path:
    """Panels per transform: mean ± std bands of NN and NN+ against log2 width, NTK line."""
    plt = _plt()
    cells = fig3_cells(df)
    trs = _order(cells["transform"].unique(), TRANSFORMS)
    fig, axes = plt.subplots(1, max(len(trs), 1), figsize=(5.2 * max(len(trs), 1), 4.0),
                             sharey=True, squeeze=False)
    colors = {"nn": "tab:blue", "nn_plus": "tab:red", "nngp": "gray", "ntk": "black"}
    for ax, tr in zip(axes[0], trs, strict=False):
        sub = cells[cells["transform"] == tr]
        for inf in _order(sub["inference"].unique(), INFERENCES):
            s = sub[sub["inference"] == inf]
            if s["width"].isna().all():
                lvl = 100 * float(s["mean"].iloc[0])
                ax.axhline(lvl, color=colors[inf], ls="--", lw=1.2,
                           label=f"{LABELS[inf]} VEC_inf ({lvl:.1f}%)")
                continue
            s = s.dropna(subset=["mean"])
            x = np.log2(s["width"].astype(float).to_numpy())
            mu, sd = 100 * s["mean"].to_numpy(), 100 * s["std"].fillna(0).to_numpy()
            ax.plot(x, mu, "o-", color=colors[inf], label=LABELS[inf])
            ax.fill_between(x, mu - sd, mu + sd, color=colors[inf], alpha=0.2)
        ax.set_title(f"VEC_n on {SHORT_T[tr]} data")
        ks = sorted({int(round(k)) for k in np.log2(sub["width"].dropna().astype(float))})
        ax.set_xticks(ks, [f"$2^{{{k}}}$" for k in ks])  # the paper's dyadic widths
        ax.set_xlabel("width n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("best test accuracy (%)")
    fig.suptitle(_title("fig3", m, "accuracy against width (mean ± std over seeds)"))
    fig.tight_layout()
    return _savefig(fig, out)


# ====================================================================== learning curves
def curve_label(inference: str, arch: str, transform: str) -> str:
    inf_w = "inf" if inference in ("ntk", "nngp") else "n"
    return f"{ARCH_LABEL[arch]}_{inf_w} {LABELS[inference]}, {SHORT_T[transform]}"


def curve_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (inference, arch, transform, m): acc / err / mse mean and std over
    successful runs, n_success, n_finished."""
    rows = []
    for (inf, arch, tr, mm), g in df.groupby(["inference", "arch", "transform", "m"],
                                             sort=False):
        ok = g[g["ok"]]
        acc, acc_sd, n = _agg(ok["best_test_acc"])
        mse, mse_sd, _ = _agg(ok["test_mse"])
        rows.append((inf, arch, tr, float(mm), acc, acc_sd, 1.0 - acc, mse, mse_sd, n, len(g)))
    pts = pd.DataFrame(rows, columns=["inference", "arch", "transform", "m", "acc", "acc_std",
                                      "err", "mse", "mse_std", "n_success", "n_finished"])
    return pts.sort_values(["inference", "arch", "transform", "m"]).reset_index(drop=True)


def curve_fits(pts: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per curve and quantity (err, mse) and segment (first, last, all): slope, R^2, stderr,
    n points and their m range."""
    rows = []
    for (inf, arch, tr), g in pts.groupby(["inference", "arch", "transform"], sort=False):
        g = g.dropna(subset=["acc"])
        for q in ("err", "mse"):
            fits = segment_fits(g["m"], g[q], first=first, last=last)
            for seg, f in fits.items():
                if f is None:
                    continue
                rows.append((inf, arch, tr, q, seg, f.slope, f.r2, f.stderr, f.n, f.x_min,
                             f.x_max, f.intercept))
    return pd.DataFrame(rows, columns=["inference", "arch", "transform", "quantity", "segment",
                                       "slope", "r2", "stderr", "points", "m_min", "m_max",
                                       "intercept"])


def _fmt_fit(r: Any) -> str:
    se = "" if not np.isfinite(r.stderr) else f" ±{r.stderr:.3f}"
    return f"{r.slope:+.3f}{se} (R²={r.r2:.3f}, {int(r.m_min)}-{int(r.m_max)})"


def _fit_defaults(m: Mapping[str, Any], first: int | None, last: int | None
                  ) -> tuple[int, int]:
    a = m.get("analysis") or {}
    return (int(first if first is not None else a.get("fit_first", 3)),
            int(last if last is not None else a.get("fit_last", 3)))


def _analysis_of(m: Mapping[str, Any]) -> dict:
    """The sweep file's ``analysis`` defaults (CompositeSweep). When the file does not load,
    a warning says so and which segment lengths apply instead (they were reset silently)."""
    try:
        from orchestrator.spec import load_recorded_sweep

        # the repository's sweeps/<name>.py, never the file the manifest names (a results
        # folder is data, not code); only its analysis defaults are read, so no hash check
        return dict(getattr(load_recorded_sweep(m["sweep"], m, force=True), "analysis", {})
                    or {})
    except Exception as ex:
        d = _fit_defaults({}, None, None)
        logging.getLogger("symsweep").warning(
            "fit segments: the sweep '%s' does not load (%s: %s), so its analysis defaults "
            "are unknown; using first %d / last %d points (set them with --fit-first / "
            "--fit-last)", m.get("sweep"), type(ex).__name__,
            " ".join(str(ex).split())[:200], d[0], d[1])
        return {}


def _points_and_fits(df: pd.DataFrame, m: Mapping[str, Any], first: int | None,
                     last: int | None) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Learning-curve points, their segment fits, and the segment lengths used (first/last
    default to the sweep's)."""
    a = _analysis_of(m) if first is None or last is None else {}
    first, last = _fit_defaults({"analysis": a}, first, last)
    pts = curve_points(df)
    return pts, curve_fits(pts, first, last), first, last


def curves_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
                 first: int | None = None, last: int | None = None, name: str = "fig4",
                 **_: Any) -> str:
    pts, fits, first, last = _points_and_fits(df, m, first, last)
    if fmt == "csv":
        return pts.to_csv(index=False) + "\n" + fits.to_csv(index=False)
    out = io.StringIO()
    out.write(f"{name} [{m.get('preset')}]: learning curves, test accuracy / error in %, test "
              "MSE (mean over successful runs; m counts flips)\n")
    for (inf, arch, tr), g in pts.groupby(["inference", "arch", "transform"], sort=False):
        out.write(f"\n{curve_label(inf, arch, tr)}\n")
        t = pd.DataFrame({
            "m": g["m"].astype(int),
            "acc %": [format_cell(a, s, n, k) for a, s, n, k in
                      zip(g["acc"], g["acc_std"], g["n_success"], g["n_finished"], strict=True)],
            "err %": [f"{100 * e:.2f}" if np.isfinite(e) else "-" for e in g["err"]],
            "MSE": [f"{v:.5f}" if np.isfinite(v) else "-" for v in g["mse"]],
        })
        out.write(t.to_string(index=False) + "\n")
    out.write(f"\npower-law slopes on log-log (first {first} / last {last} points / all; "
              "± = stderr of the slope)\n")
    if len(fits):
        rows = {}
        for (inf, arch, tr), g in fits.groupby(["inference", "arch", "transform"], sort=False):
            r = {f"{q} {seg}": _fmt_fit(x) for x in g.itertuples()
                 for q, seg in [(x.quantity, x.segment)]}
            rows[curve_label(inf, arch, tr)] = r
        cols = [f"{q} {s}" for q in ("err", "mse") for s in ("first", "last", "all")]
        frame = pd.DataFrame(rows).T
        frame = frame[[c for c in cols if c in frame.columns]].fillna("-")
        with pd.option_context("display.width", 400, "display.max_columns", 30,
                               "display.max_colwidth", 60):
            out.write(frame.to_string() + "\n")
    else:
        out.write("(fewer than two sizes per curve: no fits)\n")
    return out.getvalue()


def _draw_fit(ax: Any, f: PowerLawFit | None, color: Any, ls: str) -> None:
    if f is None:
        return
    xs = np.geomspace(f.x_min, f.x_max, 20)
    ax.plot(xs, f.predict(xs), ls, color=color, lw=1.0, alpha=0.9)


def curves_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
                first: int | None = None, last: int | None = None, name: str = "fig4",
                **_: Any) -> Path:
    """Two panels (test error, test MSE) on log-log axes: one curve per triplet, dashed /
    dotted fitted lines over the first / last segments, slopes in the legend."""
    plt = _plt()
    first, last = _fit_defaults({"analysis": _analysis_of(m)}, first, last)
    pts = curve_points(df)
    keys = list(pts.groupby(["inference", "arch", "transform"], sort=False).groups)
    colors = plt.get_cmap("tab10")(np.arange(max(len(keys), 1)) % 10)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for (inf, arch, tr), col in zip(keys, colors, strict=False):
        g = pts[(pts["inference"] == inf) & (pts["arch"] == arch) & (pts["transform"] == tr)]
        g = g.dropna(subset=["acc"])
        for ax, q in zip(axes, ("err", "mse"), strict=True):
            fits = segment_fits(g["m"], g[q], first=first, last=last)
            sl = "/".join(f"{fits[s].slope:+.2f}" if fits[s] is not None else "-"
                          for s in ("first", "last"))
            ax.plot(g["m"], g[q], "o-", color=col, label=f"{curve_label(inf, arch, tr)}: {sl}")
            _draw_fit(ax, fits["first"], col, "--")
            _draw_fit(ax, fits["last"], col, ":")
    for ax, q in zip(axes, ("test error (1 - best test accuracy)", "test MSE"), strict=True):
        _loglog(ax)
        ax.set_xlabel("training-set size m")
        ax.set_ylabel(q)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title=f"slopes first {first} / last {last} points",
                  title_fontsize=7)
    fig.suptitle(_title(name, m, "learning curves with power-law fits"))
    fig.tight_layout()
    return _savefig(fig, out)


def figS6_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
                first: int | None = None, last: int | None = None, **_: Any) -> str:
    """Exponents of the NTK learning curves: rows arch, columns transform; the MSE slope
    over all sizes (± stderr, R^2), then the full curves and segment fits."""
    pts, fits, first, last = _points_and_fits(df, m, first, last)
    if fmt == "csv":
        return pts.to_csv(index=False) + "\n" + fits.to_csv(index=False)
    out = io.StringIO()
    out.write(f"figS6 [{m.get('preset')}]: NTK scaling-law exponents, slope of test MSE "
              "against m on log-log over all sizes (± stderr; R²)\n")
    allf = fits[(fits["segment"] == "all")]
    for q, label in (("mse", "test MSE"), ("err", "test error")):
        sub = allf[allf["quantity"] == q]
        tab = {}
        for r in sub.itertuples():
            se = f" ±{r.stderr:.3f}" if np.isfinite(r.stderr) else ""
            tab.setdefault(r.arch, {})[SHORT_T[r.transform]] = f"{r.slope:+.3f}{se} " \
                                                               f"({r.r2:.3f})"
        frame = pd.DataFrame(tab).T
        if len(frame):
            frame = frame.loc[_order(frame.index, ARCHS),
                              [SHORT_T[t] for t in TRANSFORMS if SHORT_T[t] in frame.columns]]
        out.write(f"\n{label}\n{frame.fillna('-').to_string() if len(frame) else '(no fits)'}\n")
    out.write("\n" + curves_table(df, m, "text", first, last, name="figS6"))
    return out.getvalue()


def figS6_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
               first: int | None = None, last: int | None = None, **_: Any) -> Path:
    """One panel per arch: NTK test MSE against m on log-log, a line per transform with its
    exponent (all-points fit) in the legend; a second row with test error."""
    plt = _plt()
    pts = curve_points(df)
    archs = _order(pts["arch"].unique(), ARCHS)
    trs = _order(pts["transform"].unique(), TRANSFORMS)
    colors = dict(zip(trs, plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(trs), 1))),
                      strict=False))
    na = max(len(archs), 1)
    fig, axes = plt.subplots(2, na, figsize=(3.6 * na, 6.4), squeeze=False)
    for j, arch in enumerate(archs):
        for i, q in enumerate(("mse", "err")):
            ax = axes[i][j]
            for tr in trs:
                g = pts[(pts["arch"] == arch) & (pts["transform"] == tr)].dropna(subset=["acc"])
                if not len(g):
                    continue
                f = segment_fits(g["m"], g[q], first=2, last=2)["all"]
                lab = f"{SHORT_T[tr]} {f.slope:+.2f}" if f is not None else SHORT_T[tr]
                ax.plot(g["m"], g[q], "o-", ms=3, color=colors[tr], label=lab)
            _loglog(ax)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6)
            if i == 0:
                ax.set_title(f"{ARCH_LABEL[arch]}_inf (NTK)")
            else:
                ax.set_xlabel("training-set size m")
        axes[0][0].set_ylabel("test MSE")
        axes[1][0].set_ylabel("test error")
    fig.suptitle(_title("figS6", m, "NTK scaling laws (legend: log-log slope)"))
    fig.tight_layout()
    return _savefig(fig, out)


# ====================================================================== figS5
def figS5_cells(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arch, tr, init), g in df.groupby(["arch", "transform", "first_layer_init"],
                                          sort=False):
        mean, std, n = _agg(g.loc[g["ok"], "best_test_acc"])
        rows.append((arch, tr, init, mean, std, n, len(g)))
    cells = pd.DataFrame(rows, columns=["arch", "transform", "first_layer_init", "mean", "std",
                                       "n_success", "n_finished"])
    key = cells["arch"].map({k: i for i, k in enumerate(ARCHS)}) * 100 + \
        cells["transform"].map({k: i for i, k in enumerate(TRANSFORMS)}) * 10 + \
        (cells["first_layer_init"] == "uniform")
    return cells.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def figS5_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text", **_: Any) -> str:
    cells = figS5_cells(df)
    if fmt == "csv":
        return cells.to_csv(index=False)
    trs = _order(cells["transform"].unique(), TRANSFORMS)
    rows, index = [], []
    for arch in _order(cells["arch"].unique(), ARCHS):
        for init in ("gaussian", "uniform"):
            s = cells[(cells["arch"] == arch) & (cells["first_layer_init"] == init)]
            by_t = {r.transform: r for r in s.itertuples()}
            rows.append([format_cell(by_t[t].mean, by_t[t].std, by_t[t].n_success,
                                     by_t[t].n_finished) if t in by_t else "" for t in trs])
            index.append((arch, init))
        g = cells[(cells["arch"] == arch)].pivot_table(index="transform",
                                                        columns="first_layer_init",
                                                        values="mean", dropna=False)
        diff = [f"{100 * (g.loc[t, 'uniform'] - g.loc[t, 'gaussian']):+.1f}"
                if t in g.index and {"uniform", "gaussian"} <= set(g.columns)
                and np.isfinite(g.loc[t, "uniform"] - g.loc[t, "gaussian"]) else ""
                for t in trs]
        rows.append(diff)
        index.append((arch, "uniform - gaussian"))
    frame = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["arch", "init"]),
                         columns=[SHORT_T[t] for t in trs])
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        body = frame.to_string()
    return (f"figS5 [{m.get('preset')}]: NN best test accuracy in %, first layer Gaussian vs "
            f"uniform of equal variance (mean ± std, successful/finished)\n{body}\n")


def figS5_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, **_: Any) -> Path:
    """Scatter of every (arch, transform) cell: Gaussian (x) against uniform (y) accuracy with
    std error bars; the diagonal is 'no change'."""
    plt = _plt()
    cells = figS5_cells(df)
    piv = cells.pivot_table(index=["arch", "transform"], columns="first_layer_init",
                            values=["mean", "std"])
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    marks = dict(zip(TRANSFORMS, "os^Dv", strict=True))
    colors = dict(zip(ARCHS, plt.get_cmap("tab10")(np.arange(6)), strict=True))
    lo, hi = np.inf, -np.inf
    for (arch, tr), r in piv.iterrows():
        try:
            x, y = 100 * r[("mean", "gaussian")], 100 * r[("mean", "uniform")]
            xe, ye = 100 * r[("std", "gaussian")], 100 * r[("std", "uniform")]
        except KeyError:
            continue
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        ax.errorbar(x, y, xerr=np.nan_to_num(xe), yerr=np.nan_to_num(ye), fmt=marks[tr],
                    color=colors[arch], ms=5, capsize=2, label=f"{arch} {SHORT_T[tr]}")
        lo, hi = min(lo, x, y), max(hi, x, y)
    if np.isfinite(lo):
        pad = 0.05 * max(hi - lo, 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    ax.set_xlabel("Gaussian first layer: best test accuracy (%)")
    ax.set_ylabel("uniform first layer: best test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(_title("figS5", m, "first-layer init"), fontsize=9)
    fig.tight_layout()
    return _savefig(fig, out)


# ====================================================================== figS1
def _read_npy(results: str, path: str) -> np.ndarray:
    from orchestrator.fsio import resolve_root

    fs, _ = resolve_root(results)
    with fs.open_input_file(path) as f:
        return np.load(io.BytesIO(f.read()))


def _test_labels(cfg: Mapping[str, Any], data_dir: str | None) -> np.ndarray:
    from workers.data import build_dataset

    c = {**cfg, "train_size": 10, "val_size": 0, "transform": "identity", "path_t": None,
         "flip": False}
    if data_dir:
        c["data_dir"] = data_dir
    return build_dataset(c).labels_test


def figS1_cells(df: pd.DataFrame, results: str, data_dir: str | None = None) -> pd.DataFrame:
    """One row per (width, t): ensemble members, ensemble test accuracy and MSE of
    VEC_n^tau_t, S-Dist to GAP_n (same width, t = 0) and to VEC_inf, from stored predictions."""
    have = df[df["ok"] & df["predictions_path"].notna()]
    if not len(have):
        raise DataError("no successful trial stored test predictions; run the figS1 sweep "
                        "(its workers set store_predictions)")
    cache: dict[str, np.ndarray] = {}

    def preds(rows: pd.DataFrame) -> np.ndarray:
        out = []
        for p in rows["predictions_path"]:
            if p not in cache:
                cache[p] = _read_npy(results, p)
            out.append(cache[p])
        return np.stack(out)

    labels = _test_labels(have["config"].iloc[0], data_dir)
    y = np.eye(10)[labels] - 0.1
    inf = have[have["kind"] == "kernel"]
    vec_inf = preds(inf[inf["arch"] == "vec"]) if len(inf[inf["arch"] == "vec"]) else None
    gap = have[(have["kind"] == "train") & (have["arch"] == "gap")]
    vec = have[(have["kind"] == "train") & (have["arch"] == "vec")]
    rows = []
    for (w, t), g in vec.groupby(["width", vec["path_t"].fillna(0.0)], sort=True):
        ens = preds(g)
        gw = gap[gap["width"] == w]
        d_gap = s_dist(ens, preds(gw)) if len(gw) else math.nan
        d_inf = s_dist(ens, vec_inf) if vec_inf is not None else math.nan
        rows.append((int(w), float(t), len(g), ensemble_accuracy(ens, labels),
                     ensemble_mse(ens, y), d_gap, d_inf, len(gw)))
    return pd.DataFrame(rows, columns=["width", "t", "members", "ens_acc", "ens_mse",
                                       "sdist_gap", "sdist_vec_inf", "gap_members"])


def figS1_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
                results: str = "results", **_: Any) -> str:
    cells = figS1_cells(df, results, m.get("data_dir"))
    if fmt == "csv":
        return cells.to_csv(index=False)
    out = io.StringIO()
    out.write(f"figS1 [{m.get('preset')}]: VEC_n^tau_t along the rotation path (NN+, ensembles "
              "over initialisations; rows width n, columns t)\n")
    for col, label, f in (("ens_acc", "ensemble test accuracy (%)", lambda v: f"{100 * v:.1f}"),
                          ("sdist_gap", "S-Dist(VEC_n^tau_t, GAP_n)", lambda v: f"{v:.4f}"),
                          ("sdist_vec_inf", "S-Dist(VEC_n^tau_t, VEC_inf)",
                           lambda v: f"{v:.4f}"),
                          ("members", "ensemble members", lambda v: f"{int(v)}")):
        piv = cells.pivot(index="width", columns="t", values=col)
        piv.columns = [f"t={c:g}" for c in piv.columns]
        body = piv.map(lambda v, f=f: f(v) if np.isfinite(v) else "-").to_string()
        out.write(f"\n{label}\n{body}\n")
    return out.getvalue()


def figS1_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
               results: str = "results", **_: Any) -> Path:
    plt = _plt()
    cells = figS1_cells(df, results, m.get("data_dir"))
    widths = sorted(cells["width"].unique())
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(widths), 1)))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for w, col in zip(widths, colors, strict=False):
        g = cells[cells["width"] == w].sort_values("t")
        axes[0].plot(g["t"], 100 * g["ens_acc"], "o-", color=col, label=f"n={w}")
        axes[1].plot(g["t"], g["sdist_gap"], "o-", color=col, label=f"n={w}")
        axes[2].plot(g["t"], g["sdist_vec_inf"], "o-", color=col, label=f"n={w}")
    for ax, lab in zip(axes, ("ensemble test accuracy (%)", "S-Dist(VEC_n^tau_t, GAP_n)",
                              "S-Dist(VEC_n^tau_t, VEC_inf)"), strict=True):
        ax.set_xlabel("path time t (tau_t = exp(-tA))")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title("figS1", m, "along the rotation path (NN+ ensembles)"))
    fig.tight_layout()
    return _savefig(fig, out)


# ====================================================================== ImageNet
def _imagenet_segments(m: Mapping[str, Any], first: int | None, last: int | None
                       ) -> tuple[int, int]:
    a = _analysis_of(m) if first is None or last is None else {}
    return _fit_defaults({"analysis": a}, first, last)


def fig5_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
               first: int | None = None, last: int | None = None, **_: Any) -> str:
    from orchestrator import imagenet_figures as inf

    f, la = _imagenet_segments(m, first, last)
    return inf.fig5_table(inf.with_subsets(df), m, fmt, first=f, last=la)


def fig5_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
              first: int | None = None, last: int | None = None, **_: Any) -> Path:
    from orchestrator import imagenet_figures as inf

    f, la = _imagenet_segments(m, first, last)
    return inf.fig5_plot(inf.with_subsets(df), m, out, first=f, last=la)


def _history(m: Mapping[str, Any], results: str) -> pd.DataFrame:
    from orchestrator.results import load as load_view

    return load_view(m["sweep"], results, view="history")


def figS4_table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text",
                results: str = "results", **_: Any) -> str:
    from orchestrator import imagenet_figures as inf

    return inf.figS4_table(df, m, _history(m, results), fmt)


def figS4_plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path,
               results: str = "results", **_: Any) -> Path:
    from orchestrator import imagenet_figures as inf

    return inf.figS4_plot(df, m, _history(m, results), out)


# ====================================================================== registry
@dataclass(frozen=True)
class Figure:
    table: Callable[..., str]
    plot: Callable[..., Path]


FIGURES: dict[str, Figure] = {
    "fig3": Figure(fig3_table, fig3_plot),
    "fig4": Figure(curves_table, curves_plot),
    "fig5": Figure(fig5_table, fig5_plot),
    "figS4": Figure(figS4_table, figS4_plot),
    "figS1": Figure(figS1_table, figS1_plot),
    "figS5": Figure(figS5_table, figS5_plot),
    "figS6": Figure(figS6_table, figS6_plot),
}


def figure_table(sweep: str, results: str = "results", *, fmt: str = "text",
                 first: int | None = None, last: int | None = None) -> str:
    """The table of a registered figure from the results (text or csv)."""
    if fmt not in ("text", "csv"):
        raise ConfigError(f"--format {fmt!r}: choose text or csv")
    df, m = load(sweep, results)
    return FIGURES[sweep].table(df, m, fmt=fmt, first=first, last=last, results=results)


def figure_plot(sweep: str, results: str = "results", out: str | Path | None = None, *,
                first: int | None = None, last: int | None = None) -> Path:
    """Write the PNG of a registered figure (default <results>/<sweep>/<sweep>.png)."""
    df, m = load(sweep, results)
    path = out or f"{results.rstrip('/')}/{sweep}/{sweep}.png"
    return FIGURES[sweep].plot(df, m, path, first=first, last=last, results=results)


__all__ = ["FIGURES", "curve_fits", "curve_points", "enrich",
           "fig3_cells", "figS1_cells", "figS5_cells", "figure_plot", "figure_table", "load"]
