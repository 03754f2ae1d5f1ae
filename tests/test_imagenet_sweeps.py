"""The ImageNet sweeps (sweeps/fig5.py, sweeps/figS4.py): expansion at every preset, a reduced
smoke run through the runner's trial path (crash and resume included) into tables and plots,
the FLOP-count plan, and (slow) the full smoke presets through ``symsweep run``."""

from __future__ import annotations

from pathlib import Path

import pytest
from smoke_helpers import run_smoke_through_cli

from orchestrator.context import RunContext
from orchestrator.figures import figure_plot, figure_table, load
from orchestrator.runner import code_version
from orchestrator.spec import Sweep, load_sweep
from orchestrator.store import Store
from orchestrator.trial import InjectedFault, execute_trial
from workers.train import train

REPO = Path(__file__).resolve().parents[1]
SWEEPS = {n: REPO / "sweeps" / f"{n}.py" for n in ("fig5", "figS4")}


def test_expansion_at_every_preset() -> None:
    f5, s4 = load_sweep(SWEEPS["fig5"]), load_sweep(SWEEPS["figS4"])
    paper = f5.expand("paper")
    curve_archs = {"resnet101", "mixer_s16"}
    curves = [t for t in paper if t.config["arch"] in curve_archs]
    scatter = [t for t in paper if t.config["subset"] == 0
               and t.config["arch"].startswith("resnet")]
    # i in [12] = 0..11 (Sec. 6.2; the paper counts [d] from 0): i = 0, all of ImageNet, ends
    # every curve, and the six/six fit splits at i = 6
    assert len(curves) == 2 * 2 * 12 and {t.config["arch"] for t in curves} == curve_archs
    assert sorted({t.config["subset"] for t in curves}) == list(range(12))
    assert len(scatter) == 12 and {t.config["transform"] for t in scatter} == {
        "identity", "pixel_rotation"}
    # ResNet-101 on all of ImageNet: one trial per transform, shared by the curve and the
    # scatter, with the id the scatter (and Fig. S4's seed 0) always had
    full101 = sorted(t.trial_id for t in paper if t.config["arch"] == "resnet101"
                     and t.config["subset"] == 0)
    assert full101 == ["4f5503f7d024fae7", "b9a2b6f9e11240ba"]
    assert len(paper) == len({t.trial_id for t in paper}) == 48 + 10
    assert set(full101) <= {t.trial_id for t in s4.expand("paper")}
    c = paper[0].config
    assert (c["dataset"], c["image_size"], c["batch_size"], c["epochs"], c["base_lr"],
            c["weight_decay"], c["nesterov"]) == ("imagenet", 224, 1024, 150, 0.1, 1e-4, True)
    assert paper[0].resources["gpu"] == 8 and c["checkpoint_every_epochs"] == 1
    mixer = [t for t in paper if t.config["arch"] == "mixer_s16"][0].config
    assert mixer["width"] == 512 and "depth" not in mixer  # Mixer-S/16's own 8 blocks
    s4_paper = s4.expand("paper")  # the caption: "Averaged over 3 runs"
    assert len(s4_paper) == 6 * 3 * 3
    assert sorted({t.config["seed"] for t in s4_paper}) == [0, 1, 2]
    assert "3 seeds" in s4.preset("paper").description
    assert all("1 seed" in sw.preset(p).description for sw, p in (
        (f5, "smoke"), (f5, "cpu"), (f5, "paper"), (s4, "smoke"), (s4, "cpu")))
    smoke = f5.expand("smoke")  # ResNet-18's full-data runs: the curve's and the scatter's
    assert len(smoke) == 2 * 2 * 4 + 2 and all(t.config["data_dir"].startswith("synthetic://")
                                               for t in smoke)
    assert sorted({t.config["subset"] for t in smoke}) == [0, 3, 6, 9]
    assert {t.config["arch"] for t in f5.expand("cpu")} == {"resnet18", "resnet34", "resnet50",
                                                            "mixer_s16"}
    assert all(t.config["data_dir"] == "cifar10://../shared/data" for t in s4.expand("cpu"))

    cpu = f5.expand("cpu")  # the scatter is narrower than the curves (hours on 2 cores)
    assert {t.config["width"] for t in cpu if t.config["subset"] == 0
            and t.config["arch"] in ("resnet34", "resnet50")} == {8}
    r18 = [t for t in cpu if t.config["arch"] == "resnet18"]
    assert sorted((t.config["width"], t.config["subset"]) for t in r18
                  if t.config["transform"] == "identity") == [(8, 0)] + [(16, i)
                                                                          for i in range(12)]
    assert {t.config["width"] for t in cpu if t.config["arch"] == "mixer_s16"} == {64}


def test_fig5_labels_each_point_with_its_own_width() -> None:
    """One arch at two widths (the cpu preset: ResNet-18 w16 curves, w8 scatter) is two
    models: the scatter says w8, the curve w16, and neither averages the other's runs."""
    import pandas as pd

    from orchestrator.figures.fig5 import curve_points, fig5_text, scatter_points, with_subsets

    rows = [("resnet18", t, w, sub, m, acc) for t, w, sub, m, acc in [
        ("identity", 16, 1, 700, 0.60), ("pixel_rotation", 16, 1, 700, 0.50),
        ("identity", 8, 0, 1000, 0.40), ("pixel_rotation", 8, 0, 1000, 0.30)]]
    df = with_subsets(pd.DataFrame({
        "arch": [r[0] for r in rows], "transform": [r[1] for r in rows],
        "config": [{"width": r[2], "subset": r[3]} for r in rows],
        "train_size": [r[4] for r in rows], "best_test_acc": [r[5] for r in rows]}))
    sc, pts = scatter_points(df), curve_points(df)
    assert list(sc["model"]) == ["ResNet-18 w8"]
    assert sc["clean"].iloc[0] == pytest.approx(0.40) and sc["gap_points"].iloc[0] == \
        pytest.approx(10.0)
    assert set(pts["model"]) == {"ResNet-18 w16"} and list(pts["acc"]) == [0.60, 0.50]
    text = fig5_text(df, {"preset": "cpu"}, first=1, last=1)
    assert "ResNet-18 w8 " in text and "ResNet-18 w16, clean" in text


def test_fig5_curves_end_at_all_images_and_fit_i_ge_6_and_i_lt_6(tmp_path: Path) -> None:
    """A store of the paper expansion's rows (written directly, no training): each curve has
    the 12 points i = 0..11 (i = 0: all images), the first fit covers m_11..m_6, the last
    m_5..m_0 (the paper's "i >= 6 / i < 6"), and the scatter reads the same full-data
    ResNet-101 rows as the curve, once."""
    import datetime as dt
    import json

    from workers.imagenet import subset_size

    sw = load_sweep(SWEEPS["fig5"])
    trials = sw.expand("paper")
    st = Store(str(tmp_path), "fig5")
    st.write_manifest({"sweep": "fig5", "preset": "paper", "source": sw.source,
                       "success_train_acc": 0.0, "trials": [t.to_dict() for t in trials],
                       "analysis": {"fit_first": 6, "fit_last": 6}})
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    full = 1_281_167
    for t in trials:
        c = t.config
        i, m = int(c["subset"]), subset_size(full, int(c["subset"]))
        # a cusp at m_6: slope -0.1 below it, -0.4 above it
        err = 0.5 * (m / subset_size(full, 6)) ** (-0.1 if i >= 6 else -0.4)
        if c["arch"] != "resnet101" and c["subset"] == 0 and c["arch"] != "mixer_s16":
            err = 0.3
        if c["transform"] == "pixel_rotation":
            err = min(0.99, err * 1.1)
        st.write_attempt(dict(trial_id=t.trial_id, attempt=1, preset="paper", kind="train",
                              arch=c["arch"], inference="nn", transform=c["transform"],
                              seed=0, status="completed", best_test_acc=1 - err,
                              test_acc=1 - err, train_acc=0.9, train_size=m,
                              config_json=json.dumps(c), started_at=t0, finished_at=t0))
    from orchestrator.figures.fig5 import curve_fits, curve_points, scatter_points, with_subsets

    df = with_subsets(load("fig5", str(tmp_path))[0])
    assert sorted(df.loc[df["arch"] == "resnet101", "m"].astype(int).unique()) == sorted(
        subset_size(full, i) for i in range(12))
    pts = curve_points(df)
    assert set(pts["model"]) == {"ResNet-101", "Mixer-S/16"}  # scatter depths: no curve
    assert pts.groupby(["model", "transform"]).size().tolist() == [12] * 4
    assert pts["subset"].max() == 11 and (pts.loc[pts["subset"] == 0, "m"] == full).all()
    fits = curve_fits(pts, 6, 6)
    for fs in fits.values():
        assert (fs["first"].x_min, fs["first"].x_max) == (subset_size(full, 11),
                                                          subset_size(full, 6))
        assert (fs["last"].x_min, fs["last"].x_max) == (subset_size(full, 5), full)
    clean = fits[("resnet101", "ResNet-101", "identity")]
    assert clean["first"].slope == pytest.approx(-0.1) and \
        clean["last"].slope == pytest.approx(-0.4)
    sc = scatter_points(df)
    assert list(sc["model"]) == ["ResNet-18", "ResNet-34", "ResNet-50", "ResNet-101",
                                 "ResNet-152", "ResNet-200"]
    r101 = sc[sc["arch"] == "resnet101"].iloc[0]
    assert r101["clean"] == pytest.approx(1 - 0.5 * (full / subset_size(full, 6)) ** -0.4)
    text = figure_table("fig5", str(tmp_path))
    assert "m_0=1,281,167" in text and "m_11=28,310" in text and "m_12" not in text
    assert "first -0.100 ±0.00 (28310-160146)" in text
    assert "last -0.400 ±0.00 (226480-1281167)" in text


def _run(sweep: Sweep, trials: list, results: Path, fault: dict | None = None) -> None:
    Store(str(results), sweep.name).write_manifest({
        "sweep": sweep.name, "preset": "smoke", "source": sweep.source,
        "success_train_acc": 0.0, "data_dir": None, "trials": [t.to_dict() for t in trials]})
    ctx = RunContext(sweep=sweep.name, preset="smoke", results=str(results),
                     code_version=code_version(), fault=fault)
    for t in trials:
        execute_trial(t, ctx, train)


def _smaller(trials: list, tmp: Path) -> list:
    for t in trials:  # one tiny net, few images: compile time dominates
        t.config.update(width=2, epochs=2, cache_dir=str(tmp / "cache"),
                        data_dir="synthetic://3x16x16")
        if t.config["arch"] == "mixer_s16":
            t.config.update(width=8, depth=1)
    return trials


@pytest.mark.slow  # five attempts, each compiling its nets: minutes on a busy 2-core machine
def test_fig5_reduced_smoke_with_a_crash_into_table_and_plot(tmp_path: Path) -> None:
    sw = load_sweep(SWEEPS["fig5"])
    trials = _smaller([t for t in sw.expand("smoke") if t.config["arch"] == "resnet18" and (
        t.config["subset"] in (0, 6, 9) and (t.config["transform"] == "identity"
                                             or t.config["subset"] == 0))], tmp_path)
    assert len(trials) == 4
    res = tmp_path / "results"
    first = trials[0]
    # attempt 1 of the first trial crashes after its first epoch's checkpoint
    with pytest.raises(InjectedFault):
        _run(sw, [first], res, fault={"crash_at_step": 1, "trials": [first.trial_id]})
    _run(sw, trials, res)
    df, _ = load("fig5", str(res))
    row = df[df["trial_id"] == first.trial_id].iloc[0]
    assert row["attempt"] == 2 and row["start_step"] > 0 and row["status"] == "completed"
    assert sorted(df["m"].astype(int)) == [2, 6, 48, 48]  # m_9, m_6 of 48 images, all
    from orchestrator.figures.fig5 import with_subsets

    assert sorted(with_subsets(df)["subset_i"]) == [0, 0, 6, 9]
    text = figure_table("fig5", str(res))
    assert "top-1 error" in text and "ResNet-18 w2, clean" in text
    assert "m_0=48" in text and "m_9=2" in text  # the curve ends at all images
    assert "first 6 / last 6" in text and "gap (points)" in text
    png = figure_plot("fig5", str(res))
    assert png.exists() and png.stat().st_size > 10_000


def test_figS4_reduced_smoke_into_table_and_plot(tmp_path: Path) -> None:
    sw = load_sweep(SWEEPS["figS4"])
    trials = _smaller([t for t in sw.expand("smoke") if t.config["arch"] == "resnet18"],
                      tmp_path)
    assert {t.config["transform"] for t in trials} == {"identity", "pixel_rotation",
                                                       "permutation"}
    res = tmp_path / "results"
    _run(sw, trials, res)
    text = figure_table("figS4", str(res))
    assert "P(3d) permuted" in text and "O(3)^d rotated" in text and "epochs run: 2" in text
    png = figure_plot("figS4", str(res))
    assert png.exists() and png.stat().st_size > 10_000


def test_figS4_draws_the_mean_and_the_range_over_seeds(tmp_path: Path) -> None:
    """Three runs of a cell: the line is their mean at each epoch, the shaded band their range,
    the table's accuracies are means and say the runs per cell."""
    import pandas as pd

    from orchestrator.figures.figS4 import epoch_curves, figS4_figure, figS4_text

    df = pd.DataFrame({"trial_id": ["a", "b", "c"], "arch": "resnet18",
                       "transform": "pixel_rotation", "test_acc": [0.3, 0.4, 0.5],
                       "best_test_acc": [0.35, 0.45, 0.55],
                       "config": [{"width": 64, "seed": s} for s in range(3)]})
    hist = pd.DataFrame([(tid, 1, ep, metric, v) for tid, off in (("a", 0.0), ("b", 0.1),
                                                                   ("c", 0.2))
                         for ep in (1, 2) for metric, v in (("epoch", ep),
                                                            ("test_acc", 0.1 * ep + off))],
                        columns=["trial_id", "attempt", "step", "metric", "value"])
    cur = epoch_curves(df, hist)
    assert len(cur) == 6 and cur.groupby("epoch")["test_acc"].mean().tolist() == \
        pytest.approx([0.2, 0.3])
    text = figS4_text(df, {"preset": "paper"}, hist)
    assert "45.00" in text and "runs per cell: 3" in text and "means over the runs" in text
    out = figS4_figure(df, {"preset": "paper", "sweep": "figS4"}, hist, tmp_path / "s4.png")
    svg = Path(out).with_suffix(".svg").read_text()
    assert "range over runs (up to 3)" in svg


def test_paper_plan_counts_flops() -> None:
    from orchestrator.plan.imagenet import model_flops, plan_imagenet

    f_train, f_eval = model_flops("resnet50", None, None, None, 224, 1000)
    # ResNet-50: about 4.1 G multiply-adds a 224x224 image forward (He et al. 2016), i.e.
    # 8.2 GFLOP; a training step is about three forward passes
    assert 7.5e9 < f_eval < 8.5e9 and 2.7 < f_train / f_eval < 3.3
    sw = load_sweep(SWEEPS["figS4"])
    trials = [t for t in sw.expand("paper") if t.config["arch"] == "resnet18"
              and t.config["seed"] == 0]
    text = plan_imagenet("figS4", "paper", trials, gpus=8)
    assert "ASSUMED 35 TFLOP/s" in text and "GPU-hours" in text and "192,153,600" in text


def test_plan_command_prices_imagenet_sweeps_from_flops(capsys) -> None:
    from orchestrator.cli import main

    args = ["plan", str(SWEEPS["figS4"]), "--preset", "paper", "--only", "arch=resnet18",
            "--only", "seed=0", "--gpus", "16"]
    assert main([*args, "--gpu-tflops", "70"]) == 0
    out = capsys.readouterr().out
    assert "figS4 [paper]: 3 ImageNet trials" in out and "ASSUMED 70 TFLOP/s" in out
    assert "on 16 GPUs" in out and "nothing was timed" in out
    assert main([*args, "--gpu-tflops", "0"]) == 2
    assert "--gpu-tflops 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEPS))
def test_full_smoke_preset_through_the_cli(name: str, tmp_path: Path) -> None:
    run_smoke_through_cli(SWEEPS[name], name, tmp_path)


@pytest.mark.parametrize("data_dir, expect", [
    (None, "name no image folder: pass --data-dir"),
    ("MISSING", "does not exist"),
    ("NOVAL", "has no val/ folder"),
])
def test_a_bad_image_folder_stops_the_sweep_before_anything_is_written(
        data_dir: str | None, expect: str, tmp_path: Path) -> None:
    """An ImageNet folder that is missing or incomplete (or none at all: the paper preset names
    none) is one DataError before the lock, the manifest or Ray, not a failure in every trial."""
    from orchestrator.runner import run_sweep
    from workers.errors import DataError

    if data_dir == "MISSING":
        data_dir = str(tmp_path / "nowhere")
    elif data_dir == "NOVAL":
        (tmp_path / "inet" / "train" / "n01440764").mkdir(parents=True)
        data_dir = str(tmp_path / "inet")
    sweep = load_sweep(SWEEPS["figS4"])
    results = tmp_path / "results"
    with pytest.raises(DataError, match=expect):
        run_sweep(sweep, "paper", results=str(results), data_dir=data_dir, progress=False,
                  tracking=False)
    assert not results.exists() or not any(results.rglob("*"))
