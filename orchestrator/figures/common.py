"""What every figure module shares: loading the latest attempt per trial through the one
result loader (`orchestrator.store.Store.load_finished`) and adding the columns the figures
need (`enrich`: ok, m, flip, path_t, first_layer_init, predictions_path, config), the labels
the tables print, the cell format, and the matplotlib plumbing (Agg backend, log-log axes,
writing the file).

A run is *successful* when it completed and, for finite networks, its best training accuracy
reached the preset's ``success_train_acc`` (`orchestrator.analysis.successful`; 0.95 in the
paper, Sec. 3).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import success_threshold, successful

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


def savefig(fig: Any, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loglog(ax: Any) -> None:
    """Log-log axes with labels on the major (decade) ticks only (minor labels overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def title(sweep: str, m: Mapping[str, Any], what: str) -> str:
    return f"{sweep} [{m.get('preset')}]: {what}"




def format_cell(mean: float, std: float, n: int, total: int, percent: bool = True) -> str:
    if n == 0:
        return f"- ({n}/{total})"
    s = 100.0 if percent else 1.0
    if n == 1:
        return f"{mean * s:.1f} ({n}/{total})"
    return f"{mean * s:.1f} ± {std * s:.1f} ({n}/{total})"
