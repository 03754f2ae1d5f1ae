"""Fig. S1: along the rotation path tau_t, per width n: ensemble accuracy of VEC_n^tau_t,
S-Dist(VEC_n^tau_t, GAP_n) and S-Dist(VEC_n^tau_t, VEC_inf) from the stored per-trial test
predictions, the ensemble mean over initialisations taken before the distance (App. E,
eq. S16: E_theta0 VEC_n^tau_t for one path A).

An ensemble is the runs of one (width, t) that share one A (their stored ``transform_seed``;
at t = 0 every A gives the identity, so all runs of t = 0 are one ensemble). The sweep draws
one A for all its runs (sweeps/figS1.py, `ONE_PATH`); a store with several A's per cell (the
sweep's earlier per-seed A) gets, per cell, the mean over its A's of the per-A numbers
(``paths`` says how many), never the accuracy of one ensemble mixing different data sets.
The members are the successful runs that completed: the stored predictions are the final
model's, which a run that diverged after reaching the threshold does not have in usable form."""

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
from workers.vocab import Status


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
    """One row per (width, t): ensemble members, paths (the A's among them; 1 for this
    sweep), ensemble test accuracy and MSE of VEC_n^tau_t, S-Dist to GAP_n (same width,
    untransformed data) and to VEC_inf, from stored predictions (module docstring)."""
    # the stored predictions are the final model's: a run that diverged (or failed) after it
    # succeeded has none worth averaging, so the ensembles take the completed successes only
    have = df[df["ok"] & df["status"].eq(Status.COMPLETED) & df["predictions_path"].notna()]
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
    t_col = vec["path_t"].fillna(0.0)
    path_a = pd.Series([path_seed(c, t) for c, t in zip(vec["config"], t_col, strict=True)],
                       index=vec.index)
    rows = []
    for (w, t), g in vec.groupby(["width", t_col], sort=True):
        gw = gap[gap["width"] == w]
        gap_ens = preds(gw) if len(gw) else None
        per_a = []
        for _, ga in g.groupby(path_a[g.index], sort=True):
            ens = preds(ga)  # (members, N_test, classes): one A, the initialisations
            per_a.append((ensemble_accuracy(ens, labels), ensemble_mse(ens, y),
                          s_dist(ens, gap_ens) if gap_ens is not None else math.nan,
                          s_dist(ens, vec_inf) if vec_inf is not None else math.nan))
        acc, mse, d_gap, d_inf = np.mean(np.asarray(per_a, dtype=float), axis=0)
        rows.append((int(w), float(t), len(g), len(per_a), float(acc), float(mse),
                     float(d_gap), float(d_inf), len(gw)))
    return pd.DataFrame(rows, columns=["width", "t", "members", "paths", "ens_acc", "ens_mse",
                                       "sdist_gap", "sdist_vec_inf", "gap_members"])


def path_seed(cfg: Mapping[str, Any], t: float) -> int:
    """The seed of the path's A a run trained on: its config's transform_seed (the seed when
    absent, as `workers.data.build_dataset` reads it); 0 for every run at t = 0 (tau_0 is the
    identity whatever A is)."""
    if not t:
        return 0
    ts = cfg.get("transform_seed")
    return int(ts if ts is not None else cfg.get("seed") or 0)


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
                          ("members", "ensemble members (initialisations)",
                           lambda v: f"{int(v)}"),
                          ("paths", "paths A among them (1: the paper's estimator)",
                           lambda v: f"{int(v)}")):
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
