"""Fig. 5 and Fig. 4 (right): the ImageNet learning curves and the ResNet-family scatter
(sweeps/fig5.py; paper Sec. 6.2, App. B.2/B.3).

- Fig. 5, top-1 error (1 - best test accuracy) against the training-set size m on
  log-log axes, one curve per (model, transform) over the subsets i = 0..11 (i = 0, all
  images, ends the curve), power-law slopes on the first and the last points
  (`orchestrator.fits.segment_fits`, the Fig. 4 code; six and six in the sweep's
  ``analysis``: i = 11..6 and i = 5..0, the paper's "i >= 6 / i < 6"); and Fig. 4 (right),
  rotated against clean top-1 accuracy on the full training set (subset 0), one point per
  ResNet depth, with the gap in points. A full-data trial is read by both panels where its
  model has a curve (ResNet-101 in the paper preset): one trial, never run twice.

The ImageNet labels (`arch_label`, `TRANSFORM_LABEL`) and the paper's numbers (`PAPER_NOTE`)
are here; `orchestrator.figures.figS4` uses them too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.figures.common import (
    draw_chance,
    draw_points,
    finish,
    loglog,
    plain_log_labels,
    pyplot,
    title,
)
from orchestrator.figures.fig4 import analysis_of, fit_defaults
from orchestrator.figures.palette import (
    CHANCE_COLOR,
    IMAGENET_FAMILY_COLORS,
    IMAGENET_FAMILY_MARKERS,
    TRANSFORM_LINESTYLES,
)
from orchestrator.fits import PowerLawFit, segment_fits
from workers.vocab import DONE_STATUSES, IMAGENET_ARCHS

TRANSFORM_LABEL = {"identity": "clean", "pixel_rotation": "O(3)^d rotated",
                   "permutation": "P(3d) permuted"}
# the same in the plots' mathtext (paper notation, as `figures.common.TRANSFORM_LABEL`)
PLOT_TRANSFORM_LABEL = {"identity": "clean", "pixel_rotation": "$O(3)^d$ rotated",
                        "permutation": "$P(3d)$ permuted"}
TRANSFORM_ORDER = ("identity", "pixel_rotation", "permutation")
PAPER_NOTE = {  # the paper's numbers for the paper preset (Sec. 6.2, App. F.2)
    "fig5": "paper: error ~ m^-0.41 (ResNet-101 clean), m^-0.49 (ResNet-101 rotated), "
            "m^-0.38 (Mixer clean) on the last segment; a cusp near m_6 ~ 2e5",
    "fig4r": "paper: the rotated-vs-clean gap is about 10 points at ResNet-18, about 6 at "
             "ResNet-200",
    "figS4": "paper: P(3d) stays below 35% for every depth",
}


def arch_label(arch: str, cfg: Mapping[str, Any] | None = None) -> str:
    """'ResNet-101', 'Mixer-S/16'; with a non-default width / depth / patch (the smoke and cpu
    stand-ins) those are said: 'ResNet-18 w16', 'Mixer w128 4 blocks 4x4'."""
    cfg = cfg or {}
    if arch.startswith("resnet"):
        w = cfg.get("width")
        return f"ResNet-{arch[6:]}" + (f" w{w}" if w and w != 64 else "")
    w, d, p = cfg.get("width"), cfg.get("depth"), cfg.get("patch_size")
    if (w in (None, 512)) and (d in (None, 8)) and (p in (None, 16)):
        return "Mixer-S/16"
    return f"Mixer w{w or 512} {d or 8} blocks {p or 16}x{p or 16}"


def order_key(arch: str) -> tuple[int, int]:
    return (IMAGENET_ARCHS.index(arch) if arch in IMAGENET_ARCHS else 99, 0)


def first_config(df: pd.DataFrame, arch: str) -> Mapping[str, Any]:
    rows = df[df["arch"] == arch]
    return rows["config"].iloc[0] if len(rows) and "config" in rows else {}


def curve_points(df: pd.DataFrame) -> pd.DataFrame:
    """Fig. 5 points: one row per (model, transform, m) of the models trained on subsets
    (i >= 1), their full-data runs (i = 0) included, with the mean best test accuracy over
    finished runs (acc), its error (err = 1 - acc) and the runs (n). A model with only
    full-data runs (a scatter-only ResNet depth) makes no curve. ``model`` is the arch's label
    with its own rows' width (`with_subsets`), so one arch at two widths makes two curves,
    never one averaged curve."""
    curved = set(df.loc[df["subset_i"] > 0, "model"])
    d = df[df["model"].isin(curved)]
    rows = []
    for (arch, model, tr, mm), g in d.groupby(["arch", "model", "transform", "m"], sort=False):
        acc = pd.to_numeric(g["best_test_acc"], errors="coerce").dropna()
        a = float(acc.mean()) if len(acc) else math.nan
        rows.append((arch, model, tr, int(g["subset_i"].iloc[0]), float(mm), a, 1.0 - a,
                     len(acc)))
    pts = pd.DataFrame(rows, columns=["arch", "model", "transform", "subset", "m", "acc", "err",
                                      "n"])
    if pts.empty:
        return pts
    pts["_a"] = pts["arch"].map(lambda a: order_key(a)[0])
    pts["_t"] = pts["transform"].map(lambda t: TRANSFORM_ORDER.index(t)
                                     if t in TRANSFORM_ORDER else 9)
    return pts.sort_values(["_a", "_t", "m"]).drop(columns=["_a", "_t"]).reset_index(drop=True)


def curve_fits(pts: pd.DataFrame, first: int, last: int
               ) -> dict[tuple[str, str, str], dict[str, PowerLawFit | None]]:
    """(arch, model, transform) -> segment fits of err against m (first, last, all). The slope
    reported is that of the error, so a curve falling as m^-0.41 has slope -0.41."""
    return {(a, mo, t): segment_fits(g["m"], g["err"], first=first, last=last)
            for (a, mo, t), g in pts.dropna(subset=["acc"]).groupby(
                ["arch", "model", "transform"], sort=False)}


def scatter_points(df: pd.DataFrame) -> pd.DataFrame:
    """Fig. 4 (right): per ResNet model trained on all images (subset 0), the mean best test
    accuracy clean and rotated and the gap (clean - rotated, in points). The depths are
    compared at one width, the one most of the depths have: the cpu preset's scatter is
    narrower (w8) than its curves, whose ResNet-18 w16 full-data point ends its curve only;
    in the paper preset every depth is w64 and ResNet-101's full-data runs are the curve's.
    ``model`` is labelled from these rows' own config."""
    d = df[(df["subset_i"] == 0) & df["arch"].str.startswith("resnet")]
    widths = pd.Series([(c or {}).get("width") for c in d["config"]] if "config" in d
                       else [None] * len(d), index=d.index, dtype=object)
    depths = pd.DataFrame({"w": widths.astype(str), "arch": d["arch"]}).drop_duplicates()
    if depths["w"].nunique() > 1:
        counts = depths["w"].value_counts()
        d = d[widths.astype(str) == counts.index[0]]
    rows = []
    for (arch, model), g in d.groupby(["arch", "model"], sort=False):
        accs = {t: pd.to_numeric(g[g["transform"] == t]["best_test_acc"],
                                 errors="coerce").mean() for t in ("identity", "pixel_rotation")}
        rows.append((arch, model, accs["identity"], accs["pixel_rotation"],
                     100 * (accs["identity"] - accs["pixel_rotation"])))
    out = pd.DataFrame(rows, columns=["arch", "model", "clean", "rotated", "gap_points"])
    return out.sort_values("arch", key=lambda s: s.map(lambda a: order_key(a)[0]))


def _fmt_fit(f: PowerLawFit | None) -> str:
    if f is None:
        return "-"
    se = f" ±{f.stderr:.2f}" if np.isfinite(f.stderr) else ""
    return f"{f.slope:+.3f}{se} ({int(f.x_min)}-{int(f.x_max)})"


def fig5_text(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text", *, first: int,
               last: int) -> str:
    """Fig. 5 and Fig. 4 (right) as text (or csv: the points, the fits, the scatter)."""
    pts, sc = curve_points(df), scatter_points(df)
    fits = curve_fits(pts, first, last) if len(pts) else {}
    if fmt == "csv":
        frows = [(a, mo, t, seg, f.slope, f.r2, f.stderr, f.n, f.x_min, f.x_max)
                 for (a, mo, t), fs in fits.items() for seg, f in fs.items() if f is not None]
        fr = pd.DataFrame(frows, columns=["arch", "model", "transform", "segment", "slope",
                                          "r2", "stderr", "points", "m_min", "m_max"])
        return "\n".join(x.to_csv(index=False) for x in (pts, fr, sc))
    out = io.StringIO()
    out.write(f"fig5 [{m.get('preset')}]: top-1 error (%) against the training-set size m "
              "(best test accuracy over training; n = runs)\n")
    if len(pts):
        tab = pts.assign(curve=[f"{mo}, {TRANSFORM_LABEL.get(t, t)}"
                                for mo, t in zip(pts["model"], pts["transform"], strict=True)])
        wide = tab.pivot_table(index="curve", columns="m", values="err", sort=False)
        wide = wide[sorted(wide.columns)]
        sub = dict(zip(pts["m"], pts["subset"], strict=False))
        wide.columns = [f"m_{sub[c]}={int(c):,}" for c in wide.columns]
        wide.index.name = None
        wide = wide.map(lambda v: f"{100 * v:.2f}" if np.isfinite(v) else "-")
        with pd.option_context("display.width", 400, "display.max_columns", 30):
            out.write(wide.to_string() + "\n")
        out.write(f"\npower-law slopes of the error on log-log (first {first} / last {last} "
                  "points / all; ± = stderr)\n")
        n_max = int(pts.groupby(["arch", "transform"]).size().max())
        if n_max < first + last:
            out.write(f"  (at most {n_max} sizes per curve: the segments overlap)\n")
        for (_, mo, t), fs in fits.items():
            name = f"{mo}, {TRANSFORM_LABEL.get(t, t)}"
            out.write(f"  {name:<40}"
                      f" first {_fmt_fit(fs['first']):<28} last {_fmt_fit(fs['last']):<28} "
                      f"all {_fmt_fit(fs['all'])}\n")
        out.write(f"  ({PAPER_NOTE['fig5']})\n")
    else:
        out.write("(no learning-curve trials finished yet)\n")
    out.write(f"\nFig. 4 (right) [{m.get('preset')}]: top-1 accuracy (%) on all training "
              "images, clean vs O(3)^d rotated\n")
    if len(sc):
        t = pd.DataFrame({"arch": list(sc["model"]),
                          "clean %": [f"{100 * v:.2f}" for v in sc["clean"]],
                          "rotated %": [f"{100 * v:.2f}" for v in sc["rotated"]],
                          "gap (points)": [f"{v:.2f}" for v in sc["gap_points"]]})
        out.write(t.to_string(index=False) + f"\n  ({PAPER_NOTE['fig4r']})\n")
    else:
        out.write("(no full-data ResNet trials finished yet)\n")
    return out.getvalue()


# one colour per model family (`palette.IMAGENET_FAMILY_COLORS`), the transform as line style
# (`palette.TRANSFORM_LINESTYLES`), as Fig. 4 draws VEC_n on clean and rotated CIFAR-10
FAMILY_COLORS, FAMILY_MARKERS = IMAGENET_FAMILY_COLORS, IMAGENET_FAMILY_MARKERS


def family(arch: str) -> str:
    """'mixer' for the Mixer, 'resnet' for every ResNet depth."""
    return "mixer" if arch.startswith("mixer") else "resnet"


def chance(df: pd.DataFrame) -> float | None:
    """Chance-level top-1 accuracy, 1 / classes: the configs' num_classes, else the classes
    their data_dir names (synthetic://CxNxS: C; cifar10://: 10); None when unknown or mixed."""
    from workers.imagenet import named_classes

    n = {int(named_classes(c) or 0) for c in df.get("config", [])}
    n.discard(0)
    return 1.0 / n.pop() if len(n) == 1 else None


def stand_in(m: Mapping[str, Any]) -> str:
    """What the data is when it is not ImageNet (cpu, smoke presets), for titles."""
    return {"cpu": "; CIFAR-10 stand-in through the ImageNet pipeline",
            "smoke": "; generated smoke images"}.get(str(m.get("preset")), "")


def fig5_figure(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, *, first: int,
                last: int) -> Path | str:
    """Left: Fig. 5, top-1 error against m (log-log; colour the model family, line style the
    transform), fitted segments thin dashed (first) and dotted (last), slopes in the legend.
    Right: Fig. 4 (right), rotated against clean top-1 accuracy per ResNet depth (colour from
    shallow to deep), the diagonal for reference."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    plt = pyplot()
    pts, sc = curve_points(df), scatter_points(df)
    fits = curve_fits(pts, first, last) if len(pts) else {}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(7.0, 3.2),
                                 gridspec_kw={"width_ratios": [1.35, 1]})
    handles = []
    for (a, mo, t), fs in fits.items():
        g = pts[(pts["model"] == mo) & (pts["transform"] == t)].dropna(subset=["acc"])
        fam = family(a)
        col, ls = FAMILY_COLORS[fam], TRANSFORM_LINESTYLES.get(t, "-")
        sl = "/".join(f"{fs[s].slope:+.2f}" if fs[s] is not None else "-"
                      for s in ("first", "last"))
        label = (f"{mo}, {PLOT_TRANSFORM_LABEL.get(t, t)} "
                 f"(slopes {sl})")
        draw_points(ax, g["m"], g["err"], color=col, marker=FAMILY_MARKERS[fam], ls=ls,
                    label=label)
        handles.append(Line2D([], [], color=col, ls=ls, marker=FAMILY_MARKERS[fam], ms=4,
                              label=label))
        for seg, fls in (("first", "--"), ("last", ":")):
            f = fs[seg]
            if f is not None:
                xs = np.geomspace(f.x_min, f.x_max, 20)
                ax.plot(xs, f.predict(xs), ls=fls, color=col, lw=0.8, alpha=0.6)
    if fits:
        loglog(ax)
        # error axes often span under a decade: say the values in percent
        lo, hi = ax.get_ylim()
        plain_log_labels(ax.yaxis, lo, hi)
        pct = FuncFormatter(lambda v, _: f"{100 * v:.3g}")
        ax.yaxis.set_major_formatter(pct)
        if hi / lo < 30:
            ax.yaxis.set_minor_formatter(pct)
    else:
        ax.text(0.5, 0.5, "no learning-curve runs yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("Training-set size m (images)")
    ax.set_ylabel("Top-1 test error (%)")
    ax.set_title("Fig. 5: learning curves")
    lvl = chance(df)
    if len(sc):
        ok = sc.dropna(subset=["clean", "rotated"])
        lo = float(min(ok["clean"].min(), ok["rotated"].min())) if len(ok) else 0.0
        hi = float(max(ok["clean"].max(), ok["rotated"].max())) if len(ok) else 1.0
        pad = 0.12 * max(hi - lo, 0.05)
        lim = (100 * (lo - pad), 100 * (hi + pad))
        bx.plot(lim, lim, "-", color=CHANCE_COLOR, lw=0.8, zorder=0.5)
        cmap = plt.get_cmap("viridis")
        # a legend, not labels at the points: depths often land within a point of each
        # other (the cpu preset's ResNet-18 and -34 do), and labels there overprint
        for k, r in enumerate(ok.itertuples()):
            bx.plot(100 * r.clean, 100 * r.rotated, "o", ms=6,
                    color=cmap(0.85 * k / max(len(ok) - 1, 1)),
                    label=f"{r.model}: gap {r.gap_points:.1f}")
        # the points sit under the diagonal (rotation costs accuracy): the corner above it
        # is empty
        bx.legend(loc="upper left", fontsize=7, frameon=False, handletextpad=0.2)
        bx.set_xlim(*lim)
        bx.set_ylim(*lim)
        if lvl is not None and lim[0] < 100 * lvl < lim[1]:
            draw_chance(bx, 100 * lvl)
    else:
        bx.text(0.5, 0.5, "Fig. 4 (right): no full-data\nResNet runs yet", ha="center",
                va="center", transform=bx.transAxes)
        bx.axis("off")  # empty axes would show a 0-1 scale that means nothing
    bx.set_xlabel("Top-1 accuracy (%), clean")
    bx.set_ylabel("Top-1 accuracy (%), $O(3)^d$ rotated")
    bx.set_title("Fig. 4 (right): ResNet depths")
    return finish(fig, out, title("fig5", m, "ImageNet data efficiency" + stand_in(m)),
                  handles, ncol=2, legend_title=f"error slopes on the first {first} / last {last} "
                  "sizes (fits dashed / dotted); right panel: all images, line = equal")


def with_subsets(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``subset_i`` (the config's subset index, 0 = all images), ``m`` (the
    row's train_size: the images the trial trained on) and ``model`` (`arch_label` of the
    row's own arch and config: 'ResNet-18 w16')."""
    d = df.copy()
    cfgs = d["config"] if "config" in d else [{}] * len(d)
    d["subset_i"] = [int(c.get("subset", 0) or 0) for c in cfgs]
    d["model"] = [arch_label(a, c) for a, c in zip(d["arch"], cfgs, strict=True)]
    d["m"] = pd.to_numeric(d["train_size"], errors="coerce")
    return d


def finished(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of trials that ran to the end (completed or diverged) and, when some failed,
    a line saying how many and where their errors are."""
    ok = df[df["status"].isin(DONE_STATUSES)]
    n_bad = len(df) - len(ok)
    note = (f"({n_bad} failed trial(s) left out: `symsweep status {df['sweep'].iloc[0]}` "
            "shows their errors)\n") if n_bad else ""
    return ok, note


def segments(m: Mapping[str, Any], first: int | None, last: int | None) -> tuple[int, int]:
    """Points of the first / last fitted segments: the command line's, else the sweep's
    ``analysis`` (six and six for fig5), as for Fig. 4."""
    a = analysis_of(m) if first is None or last is None else {}
    return fit_defaults({"analysis": a}, first, last)


def table(df: pd.DataFrame, m: Mapping[str, Any], fmt: str = "text", first: int | None = None,
          last: int | None = None, **_: Any) -> str:
    """The registry's table entry: Fig. 5 points and slopes, then Fig. 4 (right)."""
    f, la = segments(m, first, last)
    ok, note = finished(df)
    return fig5_text(with_subsets(ok), m, fmt, first=f, last=la) + (note if fmt == "text"
                                                                      else "")


def plot(df: pd.DataFrame, m: Mapping[str, Any], out: str | Path, first: int | None = None,
         last: int | None = None, **_: Any) -> Path | str:
    """The registry's plot entry: Fig. 5 (left) and Fig. 4 (right) in one PNG."""
    f, la = segments(m, first, last)
    return fig5_figure(with_subsets(finished(df)[0]), m, out, first=f, last=la)


__all__ = ["PAPER_NOTE", "PLOT_TRANSFORM_LABEL", "TRANSFORM_LABEL", "TRANSFORM_ORDER",
           "arch_label", "chance", "curve_fits", "curve_points", "family", "finished",
           "first_config", "order_key", "plot", "scatter_points", "segments", "stand_in",
           "table", "with_subsets"]
