"""Fig. S1: along the rotation path tau_t, per width n: ensemble accuracy of VEC_n^tau_t,
S-Dist(VEC_n^tau_t, GAP_n) and S-Dist(VEC_n^tau_t, VEC_inf) from the stored per-trial test
predictions, the ensemble mean over initialisations taken before the distance."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import chance_accuracy, draw_chance, finish, pyplot, title
from orchestrator.fits import ensemble_accuracy, ensemble_mse, s_dist
from workers.errors import DataError


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
    """Three panels against the path time t: ensemble test accuracy (chance dotted),
    S-Dist(VEC_n^tau_t, GAP_n) and S-Dist(VEC_n^tau_t, VEC_inf); a line per width n, darker
    for narrower (viridis: the widths are ordered, not categories)."""
    plt = pyplot()
    cells = figS1_cells(df, results, m.get("data_dir"))
    chance = chance_accuracy(df)
    widths = sorted(cells["width"].unique())
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(widths), 1)))
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.9))
    for w, col in zip(widths, colors, strict=False):
        g = cells[cells["width"] == w].sort_values("t")
        axes[0].plot(g["t"], 100 * g["ens_acc"], "o-", ms=3, color=col, label=f"$n={w}$")
        axes[1].plot(g["t"], g["sdist_gap"], "o-", ms=3, color=col, label=f"$n={w}$")
        axes[2].plot(g["t"], g["sdist_vec_inf"], "o-", ms=3, color=col, label=f"$n={w}$")
    draw_chance(axes[0], None if chance is None else 100 * chance)
    for ax, lab in zip(axes, ("Ensemble test accuracy (%)",
                              r"S-Dist(VEC$_n^{\tau_t}$, GAP$_n$)",
                              r"S-Dist(VEC$_n^{\tau_t}$, VEC$_\infty$)"), strict=True):
        ax.set_xlabel(r"Path time $t$ ($\tau_t = \exp(-tA)$)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend()
    return finish(fig, out, title("figS1", m, "along the rotation path, NN+ ensembles over "
                                  "initialisations"))
