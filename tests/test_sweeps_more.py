"""The figure sweeps fig3, fig4, figS1, figS5, figS6: expansion, nested kernel tiles, per-trial
predictions, and reduced smoke runs through the runner's trial path into tables and plots.

Default-suite runs use a reduced grid in-process (`execute_trial`, no Ray) with few SGD steps;
the full smoke presets through ``symsweep run`` (Ray) are marked slow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from smoke_helpers import run_smoke_through_cli

from orchestrator.context import RunContext
from orchestrator.figures import FIGURES, figure_plot, figure_table, load
from orchestrator.layout import ResultsLayout
from orchestrator.runner import code_version
from orchestrator.spec import CompositeSweep, Preset, Sweep, load_sweep, undo_orphan_derivations
from orchestrator.store import Store
from orchestrator.tiles import TileCache, TileMapper
from orchestrator.trial import default_worker, execute_trial, materialize_derived
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SWEEPS = {n: REPO / "sweeps" / f"{n}.py" for n in ("fig3", "fig4", "figS1", "figS5", "figS6")}


def run_subset(sweep: Sweep, preset: str, results: Path, keep=lambda t: True,
               overrides: dict | None = None) -> list[dict]:
    """Like `runner.run_local`, restricted to the trials `keep` accepts (a predicate: these
    subsets are unions, e.g. every kernel cell or some finite runs, which --only's
    conjunctive `select_trials` cannot express), with config overrides (e.g. fewer steps),
    and writing the manifest the figures read."""
    trials = undo_orphan_derivations([t for t in sweep.expand(preset) if keep(t)])
    for t in trials:
        if t.kind == "train":
            t.config.update(overrides or {})
    store = Store(str(results), sweep.name)
    p = sweep.preset(preset)
    store.write_manifest({"sweep": sweep.name, "preset": preset, "source": sweep.source,
                          "success_train_acc": p.success_train_acc, "data_dir": None,
                          "trials": [t.to_dict() for t in trials]})
    ctx = RunContext(sweep=sweep.name, preset=preset, results=str(results),
                     code_version=code_version())
    out = []
    for t in trials:
        if t.derived_from is None:
            worker = (sweep.workers or {}).get(t.kind) or default_worker(t.kind)
            out.append(execute_trial(t, ctx, worker))
    materialize_derived(store, trials, ctx)
    return out


# few steps and a given eta_0 (its estimate is tested in test_train.py): compile time dominates
FAST = {"max_steps": 40, "eval_every": 20, "checkpoint_every": 40, "eta0": 0.02}


# ---------------------------------------------------------------------------- expansion
@pytest.mark.parametrize("name", list(SWEEPS))
def test_every_figure_sweep_expands_at_every_preset(name):
    sw = load_sweep(SWEEPS[name])
    assert name in FIGURES and sw.name == name
    for preset in ("smoke", "cpu", "paper"):
        trials = sw.expand(preset)
        assert trials and len({t.trial_id for t in trials}) == len(trials)
        assert {t.config["dataset"] for t in trials} == (
            {"synthetic"} if preset == "smoke" else {"cifar10"})


def test_fig3_grid_widths_and_one_kernel_level():
    sw = load_sweep(SWEEPS["fig3"])
    paper = sw.expand("paper")
    finite = [t for t in paper if t.kind == "train"]
    assert sorted({t.config["width"] for t in finite}) == [2 ** k for k in range(3, 11)]
    assert {t.config["inference"] for t in finite} == {"nn", "nn_plus"}
    assert len(finite) == 2 * 2 * 8 * 5
    kern = [t for t in paper if t.kind == "kernel"]
    # VEC_inf is O(3)^d-invariant: pixel rotation is derived from the shared-rotation cell
    assert len(kern) == 2 and sum(t.derived_from is None for t in kern) == 1
    assert all("width" not in t.config for t in kern)
    assert sorted({t.config["width"] for t in sw.expand("smoke") if t.kind == "train"}) == \
        [2, 4, 8, 16]


def test_fig4_sizes_flips_and_triplets():
    sw = load_sweep(SWEEPS["fig4"])
    trials = sw.expand("paper")
    cells = {(t.config["inference"], t.config["arch"], t.config["transform"]) for t in trials}
    assert cells == {("nn_plus", "vec", "identity"), ("nn_plus", "vec", "pixel_rotation"),
                     ("ntk", "vec", "identity"), ("nn_plus", "lcn", "identity")}
    ms = sorted({t.config["train_size"] * (2 if t.config.get("flip") else 1) for t in trials})
    assert ms == [320 * 2 ** k for k in range(8)] + [45_000, 90_000]
    flipped = [t for t in trials if t.config.get("flip")]
    assert flipped and all(t.config["train_size"] == 45_000 for t in flipped)
    assert all(t.config["tile_side"] == 320 for t in trials if t.kind == "kernel")


def test_composite_sweep_validates_its_parts():
    p = Preset(config={"dataset": "synthetic"}, width={"vec": 4})
    a = Sweep(name="x", axes=dict(inference=["nn"], arch=["vec"], transform=["identity"]),
              presets={"smoke": p})
    b = Sweep(name="x", axes=dict(inference=["nn"], arch=["vec"], transform=["identity"]),
              presets={"smoke": p, "cpu": p})
    with pytest.raises(ConfigError, match="same presets"):
        CompositeSweep("x", [a, b])
    with pytest.raises(ConfigError, match="same trial"):
        CompositeSweep("x", [a, a]).expand("smoke")
    with pytest.raises(ConfigError, match="unknown arch"):
        CompositeSweep("x", [a], preset_axes={"smoke": {"arch": ["resnet"]}})
    with pytest.raises(ConfigError, match="no preset"):
        CompositeSweep("x", [a]).expand("paper")


# ---------------------------------------------------------------------------- nested tiles
def test_larger_m_computes_only_the_new_tiles(tmp_path):
    """Learning-curve kernels: the training subsets are prefixes and the tile side is fixed,
    so the second, larger m loads every tile of the smaller one and computes only the tiles
    that touch new images; the result equals an uncached kernel computed in one go."""
    from workers.data import build_dataset
    from workers.kernel_trial import run_kernel_trial
    from workers.kernels import kernel_matrix
    from workers.regression import kernel_predict

    base = dict(arch="vec", inference="ntk", dataset="synthetic", image_size=8, val_size=0,
                test_size=20, depth=2, tile_side=20)
    mapper = TileMapper(TileCache(ResultsLayout(str(tmp_path))), use_ray=False)
    r40 = run_kernel_trial({**base, "train_size": 40}, map_tiles=mapper)
    assert (mapper.hits, mapper.computed) == (0, 3 + 2)  # train: 3 upper tiles; test: 1 x 2
    r80 = run_kernel_trial({**base, "train_size": 80}, map_tiles=mapper)
    # train 80: 10 upper tiles of which 3 cached; test: 1 x 4 of which 2 cached
    assert (mapper.hits, mapper.computed) == (3 + 2, 5 + 7 + 2)
    ds = build_dataset({**base, "train_size": 80})
    k_tr = kernel_matrix("vec", ds.x_train, depth=2)["ntk"]
    k_te = kernel_matrix("vec", ds.x_test, ds.x_train, depth=2)["ntk"]
    pred = kernel_predict(k_tr, k_te, ds.y_train)
    assert r80["test_acc"] == pytest.approx(np.mean(np.argmax(pred, 1) == ds.labels_test))
    assert r80["test_mse"] == pytest.approx(np.mean((pred - ds.y_test) ** 2), rel=1e-4)
    assert r40["train_size"] == 40 and r80["train_size"] == 80


# ---------------------------------------------------------------------------- smoke runs
def test_fig4_reduced_smoke_run_table_fits_and_plot(tmp_path, capsys):
    sw = load_sweep(SWEEPS["fig4"])

    def keep(t):
        c = t.config
        if c["inference"] == "ntk":
            return True  # all five sizes, the flipped one included
        return c["arch"] == "vec" and c["transform"] == "identity" and c["seed"] == 0 and \
            c["train_size"] in (40, 80)

    run_subset(sw, "smoke", tmp_path, keep, FAST)
    df, _ = load("fig4", str(tmp_path))
    ntk = df[df["inference"] == "ntk"].sort_values("m")
    assert ntk["m"].tolist() == [40, 80, 160, 320, 640]
    assert ntk["status"].eq("completed").all()
    # the NTK curve gets better with more data, the flipped 640 included
    assert ntk["test_mse"].iloc[-1] < ntk["test_mse"].iloc[0]
    # tiles: each larger m reuses the smaller ones' (metrics_json has the counters)
    cached = [json.loads(s)["tiles_cached"] for s in ntk["metrics_json"]]
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])
    text = figure_table("fig4", str(tmp_path))
    assert "VEC_inf NTK, identity" in text and "VEC_n NN+, identity" in text
    assert "mse first" in text and "R²=" in text
    assert "(first 3 / last 3 points" in text  # the sweep's defaults, named in the header
    assert "(first 2 / last 4 points" in figure_table("fig4", str(tmp_path), first=2, last=4)
    csv = figure_table("fig4", str(tmp_path), fmt="csv", first=2, last=2)
    fits = pd.read_csv(__import__("io").StringIO(csv.split("\n\n")[1]))
    row = fits[(fits["inference"] == "ntk") & (fits["quantity"] == "mse") &
               (fits["segment"] == "first")].iloc[0]
    assert row["points"] == 2 and row["m_max"] == 80
    # the slope in the table is the log-log slope of the stored points
    want = np.log(ntk["test_mse"].iloc[1] / ntk["test_mse"].iloc[0]) / np.log(2.0)
    assert row["slope"] == pytest.approx(want, rel=1e-9)
    png = figure_plot("fig4", str(tmp_path))
    assert png.exists() and png.stat().st_size > 10_000


def test_fig3_reduced_smoke_run(tmp_path):
    sw = load_sweep(SWEEPS["fig3"])
    run_subset(sw, "smoke", tmp_path, lambda t: t.kind == "kernel" or (
        t.config["width"] in (2, 4) and t.config["seed"] == 0 and t.config["inference"] == "nn"),
        FAST)
    df, _ = load("fig3", str(tmp_path))
    assert len(df) == 2 * 2 + 2  # 2 widths x 2 transforms, 2 kernel rows (one derived)
    text = figure_table("fig3", str(tmp_path))
    assert "n=2" in text and "n=4" in text and "NTK (VEC_inf)" in text
    ntk = df[df["inference"] == "ntk"]["best_test_acc"].to_numpy()
    assert ntk[0] == ntk[1]  # the derived pixel-rotation cell equals the computed one
    assert figure_plot("fig3", str(tmp_path)).stat().st_size > 10_000


def test_figS1_predictions_ensembles_and_s_dist(tmp_path):
    """Per-trial predictions land under <results>/figS1/predictions; the analysis averages the
    ensemble before the distance; at t = 0 VEC_n^tau_0 is VEC_n itself."""
    from orchestrator.fits import s_dist

    sw = load_sweep(SWEEPS["figS1"])
    run_subset(sw, "smoke", tmp_path, lambda t: t.kind == "kernel" or (
        t.config["width"] == 4 and t.config["seed"] in (0, 1)
        and t.config.get("path_t", 0.0) in (0.0, 1.0)), FAST)
    df, _ = load("figS1", str(tmp_path))
    assert df["predictions_path"].notna().all()
    files = sorted(os.listdir(tmp_path / "figS1" / "predictions"))
    assert len(files) == len(df) and all(f.endswith(".npy") for f in files)
    # a trial's stored predictions reproduce its reported accuracy
    from workers.data import build_dataset

    r = df[(df["arch"] == "vec") & (df["kind"] == "train")].iloc[0]
    p = np.load(r["predictions_path"])
    labels = build_dataset(r["config"]).labels_test
    assert np.mean(p.argmax(1) == labels) == pytest.approx(r["test_acc"])
    k = df[df["kind"] == "kernel"].iloc[0]
    pk = np.load(k["predictions_path"])
    assert np.mean(pk.argmax(1) == labels) == pytest.approx(k["test_acc"])

    from orchestrator.figures import figS1_cells

    # one A for the ensemble (App. E, eq. S16): the two initialisations at t = 1 trained on
    # the same rotated data set, read from the stored transform seeds
    vec1 = df[(df["arch"] == "vec") & (df["kind"] == "train") & (df["path_t"] == 1.0)]
    assert sorted(vec1["seed"]) == [0, 1]
    assert {c["transform_seed"] for c in vec1["config"]} == {0}
    cells = figS1_cells(df, str(tmp_path))
    assert cells["t"].tolist() == [0.0, 1.0] and (cells["members"] == 2).all()
    assert (cells["paths"] == 1).all()
    vec0 = np.stack([np.load(x) for x in df[(df["arch"] == "vec") & (df["kind"] == "train") &
                                             (df["path_t"] == 0.0)]["predictions_path"]])
    gap = np.stack([np.load(x) for x in df[df["arch"] == "gap"]["predictions_path"]])
    assert cells["sdist_gap"].iloc[0] == pytest.approx(s_dist(vec0, gap), rel=1e-12)
    assert cells["sdist_vec_inf"].iloc[0] == pytest.approx(s_dist(vec0, pk), rel=1e-12)
    # mean before distance: strictly below the mean of per-member distances
    per_member = np.mean([s_dist(v, gap) for v in vec0])
    assert cells["sdist_gap"].iloc[0] < per_member
    text = figure_table("figS1", str(tmp_path))
    assert "S-Dist(VEC_n^tau_t, GAP_n)" in text and "t=1" in text
    assert figure_plot("figS1", str(tmp_path)).stat().st_size > 10_000


def test_figS1_one_path_A_across_the_ensemble_at_every_preset():
    """Every VEC_n run of a preset draws the same A (transform_seed), the initialisations vary
    (seed); GAP_n and VEC_inf keep their trial ids (transform_seed = seed, as before)."""
    sw = load_sweep(SWEEPS["figS1"])
    for preset in ("smoke", "cpu", "paper"):
        trials = sw.expand(preset)
        vec = [t for t in trials if t.kind == "train" and t.config["arch"] == "vec"]
        assert {t.config["transform_seed"] for t in vec} == {0}
        assert len({t.config["seed"] for t in vec}) == len(sw.preset(preset).seeds) > 1
        others = [t for t in trials if t not in vec]
        assert all(t.config["transform_seed"] == t.config["seed"] for t in others)
    assert len({t.config["seed"] for t in sw.expand("paper")}) == 10


def test_figS1_cells_average_per_A_never_across_data_sets(tmp_path):
    """A store whose runs drew different A's at t > 0 (the earlier per-seed A): each A is its
    own ensemble and the cell is the mean of the per-A numbers (paths = 2); at t = 0 the A does
    not matter and the runs make one ensemble."""
    import pandas as pd

    from orchestrator.figures.figS1 import figS1_cells
    from orchestrator.fits import ensemble_accuracy

    rng = np.random.default_rng(0)
    base = {"dataset": "synthetic", "image_size": 8, "train_size": 16, "test_size": 32,
            "val_size": 0}
    rows, arrays = [], {}
    for k, (arch, kind, t, seed, ts) in enumerate([
            ("vec", "train", 1.0, 0, 0), ("vec", "train", 1.0, 1, 1),
            ("vec", "train", 0.0, 0, 0), ("vec", "train", 0.0, 1, 1),
            ("gap", "train", None, 0, 0)]):
        path = str(tmp_path / f"p{k}.npy")
        arrays[path] = rng.normal(size=(32, 10)).astype(np.float32)
        np.save(path, arrays[path])
        rows.append({"arch": arch, "kind": kind, "ok": True, "status": "completed",
                     "width": 4, "seed": seed,
                     "path_t": t, "predictions_path": path,
                     "config": {**base, "seed": seed, "transform_seed": ts, "path_t": t}})
    df = pd.DataFrame(rows)
    cells = figS1_cells(df, str(tmp_path)).set_index("t")
    assert cells.loc[1.0, "paths"] == 2 and cells.loc[0.0, "paths"] == 1
    from orchestrator.figures.figS1 import _test_labels

    labels = _test_labels(rows[0]["config"], None)
    per_a = [ensemble_accuracy(arrays[rows[i]["predictions_path"]][None], labels)
             for i in (0, 1)]
    assert cells.loc[1.0, "ens_acc"] == pytest.approx(np.mean(per_a))
    both = np.stack([arrays[rows[i]["predictions_path"]] for i in (2, 3)])
    assert cells.loc[0.0, "ens_acc"] == pytest.approx(ensemble_accuracy(both, labels))


def test_figS5_and_figS6_reduced_smoke_runs(tmp_path):
    s5 = load_sweep(SWEEPS["figS5"])
    run_subset(s5, "smoke", tmp_path, lambda t: t.config["arch"] == "vec" and
               t.config["transform"] == "identity" and t.config["seed"] == 0, FAST)
    df, _ = load("figS5", str(tmp_path))
    assert sorted(df["first_layer_init"]) == ["gaussian", "uniform"]
    # different first-layer weights: different runs. Accuracies on 256 test images may tie
    # by chance; the test MSE of two differently initialised nets does not (a continuous
    # function of the trained weights)
    assert df["trial_id"].nunique() == 2
    mse = df.sort_values("first_layer_init")["test_mse"].to_numpy(dtype=float)
    assert np.isfinite(mse).all() and mse[0] != mse[1], mse
    text = figure_table("figS5", str(tmp_path))
    assert "uniform - gaussian" in text
    assert figure_plot("figS5", str(tmp_path)).stat().st_size > 5_000

    s6 = load_sweep(SWEEPS["figS6"])
    run_subset(s6, "smoke", tmp_path, lambda t: t.config["arch"] in ("fcn", "vec") and
               t.config["transform"] in ("identity", "permutation")
               and t.config["train_size"] in (40, 80, 160))
    df6, _ = load("figS6", str(tmp_path))
    assert len(df6) == 2 * 2 * 3
    # fcn is O(3d)-invariant: permutation equals identity exactly (derived row)
    f = df6[df6["arch"] == "fcn"].pivot(index="m", columns="transform", values="test_mse")
    np.testing.assert_array_equal(f["identity"], f["permutation"])
    text = figure_table("figS6", str(tmp_path))
    assert "NTK scaling-law exponents" in text and "permutation" in text
    assert figure_plot("figS6", str(tmp_path)).stat().st_size > 10_000


# ---------------------------------------------------------------------------- full smoke (Ray)
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEPS))
def test_full_smoke_preset_through_the_cli(name, tmp_path):
    run_smoke_through_cli(SWEEPS[name], name, tmp_path)
