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
    curves = [t for t in paper if t.config["subset"] > 0]
    scatter = [t for t in paper if t.config["subset"] == 0]
    assert len(curves) == 2 * 2 * 12 and {t.config["arch"] for t in curves} == {
        "resnet101", "mixer_s16"}
    assert sorted({t.config["subset"] for t in curves}) == list(range(1, 13))
    assert len(scatter) == 12 and {t.config["transform"] for t in scatter} == {
        "identity", "pixel_rotation"}
    c = paper[0].config
    assert (c["dataset"], c["image_size"], c["batch_size"], c["epochs"], c["base_lr"],
            c["weight_decay"], c["nesterov"]) == ("imagenet", 224, 1024, 150, 0.1, 1e-4, True)
    assert paper[0].resources["gpu"] == 8 and c["checkpoint_every_epochs"] == 1
    mixer = [t for t in paper if t.config["arch"] == "mixer_s16"][0].config
    assert mixer["width"] == 512 and "depth" not in mixer  # Mixer-S/16's own 8 blocks
    assert len(s4.expand("paper")) == 6 * 3
    smoke = f5.expand("smoke")
    assert len(smoke) == 2 * 2 * 4 + 4 and all(t.config["data_dir"].startswith("synthetic://")
                                               for t in smoke)
    assert {t.config["arch"] for t in f5.expand("cpu")} == {"resnet18", "resnet34", "resnet50",
                                                            "mixer_s16"}
    assert all(t.config["data_dir"] == "cifar10://../shared/data" for t in s4.expand("cpu"))

    cpu = f5.expand("cpu")  # the scatter is narrower than the curves (hours on 2 cores)
    assert {t.config["width"] for t in cpu if t.config["subset"] == 0} == {8}
    assert {t.config["width"] for t in cpu if t.config["subset"] > 0
            and t.config["arch"] == "resnet18"} == {16}


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
        t.config["subset"] in (0, 9, 12) and (t.config["transform"] == "identity"
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
    assert sorted(df["m"].astype(int)) == [1, 2, 48, 48]  # m_12, m_9 of 48 images, all
    text = figure_table("fig5", str(res))
    assert "top-1 error" in text and "ResNet-18 w2, clean" in text
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


def test_paper_plan_counts_flops() -> None:
    from orchestrator.plan.imagenet import model_flops, plan_imagenet

    f_train, f_eval = model_flops("resnet50", None, None, None, 224, 1000)
    # ResNet-50: about 4.1 G multiply-adds a 224x224 image forward (He et al. 2016), i.e.
    # 8.2 GFLOP; a training step is about three forward passes
    assert 7.5e9 < f_eval < 8.5e9 and 2.7 < f_train / f_eval < 3.3
    sw = load_sweep(SWEEPS["figS4"])
    trials = [t for t in sw.expand("paper") if t.config["arch"] == "resnet18"]
    text = plan_imagenet("figS4", "paper", trials, gpus=8)
    assert "ASSUMED 35 TFLOP/s" in text and "GPU-hours" in text and "192,153,600" in text


def test_plan_command_prices_imagenet_sweeps_from_flops(capsys) -> None:
    from orchestrator.cli import main

    args = ["plan", str(SWEEPS["figS4"]), "--preset", "paper", "--only", "arch=resnet18",
            "--gpus", "16"]
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
