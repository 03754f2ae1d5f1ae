"""The ImageNet worker (workers/imagenet_train.py): the recipe's schedule and L2 term in closed
form, a tiny run end to end, and resumption from a checkpoint equal to an uninterrupted run."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest

from workers.errors import ConfigError, DataError
from workers.imagenet_models import init_variables, make_imagenet_model
from workers.imagenet_train import lr_schedule, train_imagenet, weight_penalty


def test_schedule_closed_form() -> None:
    sched = lr_schedule(0.1, 1024, steps_per_epoch=10, epochs=20, warmup_epochs=5)
    peak = 0.1 * 1024 / 256
    assert float(sched(0)) == 0.0
    assert math.isclose(float(sched(25)), peak / 2, rel_tol=1e-6)  # half-way up the warm-up
    assert math.isclose(float(sched(50)), peak, rel_tol=1e-6)
    assert math.isclose(float(sched(125)), peak / 2, rel_tol=1e-5)  # cosine half-way: 1/2
    assert float(sched(200)) < 1e-7


def test_weight_penalty_only_kernels() -> None:
    model = make_imagenet_model("resnet18", num_classes=3, width=2)
    params = init_variables(model, jax.random.key(0), (8, 8, 3))["params"]
    ones = jax.tree_util.tree_map(np.ones_like, params)
    kernels = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params) if x.ndim > 1)
    assert float(weight_penalty(ones)) == pytest.approx(0.5 * kernels)


BASE = dict(arch="resnet18", width=4, image_size=12, epochs=2, batch_size=16,
            warmup_epochs=1, loader_threads=2, eval_batch_size=16, seed=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = str(tmp_path_factory.mktemp("cache"))
    return dict(data_dir="synthetic://3x16x16", cache_dir=cache)


def test_tiny_run_and_resume(data: dict, tmp_path) -> None:
    reports: list[dict] = []
    full_dir = str(tmp_path / "full")
    cfg = {**BASE, **data, "transform": "pixel_rotation", "keep_checkpoints": 0}
    out = train_imagenet({**cfg, "work_dir": full_dir},
                         lambda m, ck: reports.append({**m, "ckpt": ck}))
    assert out["status"] == "completed" and out["train_size"] == 48
    assert out["steps"] == 6 and out["steps_per_epoch"] == 3 and out["test_size"] == 12
    assert [r["epoch"] for r in reports] == [1.0, 2.0]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in reports)
    assert out["lr_peak"] == pytest.approx(0.1 * 16 / 256)
    # resume from the epoch-1 checkpoint: the same history and final weights
    res_dir = str(tmp_path / "resumed")
    again = train_imagenet({**cfg, "work_dir": res_dir, "resume_from": reports[0]["ckpt"]})
    assert again["steps"] == 6
    assert again["history"][1]["test_acc"] == out["history"][1]["test_acc"]
    assert again["history"][0] == out["history"][0]  # carried over from the checkpoint
    a = np.load(os.path.join(full_dir, "checkpoint_000000006", "state.npz"))
    b = np.load(os.path.join(res_dir, "checkpoint_000000006", "state.npz"))
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    # a checkpoint of another config is refused
    with pytest.raises(ConfigError, match="different config"):
        train_imagenet({**cfg, "seed": 2, "resume_from": reports[0]["ckpt"]})


def test_a_stop_inside_an_epoch_checkpoints_there_and_resumes_to_the_same_run(
        data: dict, tmp_path) -> None:
    """A stop request read after step 4 (inside epoch 2 of 3-step epochs: the paper's epochs
    outlast the driver's grace) checkpoints step 4 and returns interrupted; resumed there, the
    run ends with the uninterrupted run's history (the epoch's train loss and accuracy span
    the stop) and weights."""
    cfg = {**BASE, **data, "transform": "identity", "keep_checkpoints": 0}
    full = train_imagenet({**cfg, "work_dir": str(tmp_path / "full")})
    reports: list = []
    asked: list = []

    def stop_after_step_4() -> bool:
        asked.append(1)
        return len(asked) == 4

    cut = train_imagenet({**cfg, "work_dir": str(tmp_path / "cut")},
                         lambda m, ck: reports.append((m["step"], ck)), stop_after_step_4)
    assert cut["status"] == "interrupted" and cut["steps"] == 4 and "step 4" in cut["error"]
    assert [s for s, _ in reports] == [3, 4] and reports[-1][1].endswith("checkpoint_000000004")
    again = train_imagenet({**cfg, "work_dir": str(tmp_path / "again"),
                            "resume_from": reports[-1][1]}, should_stop=lambda: False)
    assert again["status"] == "completed" and again["steps"] == 6
    for k in ("train_loss", "train_acc", "test_acc"):
        assert [h[k] for h in again["history"]] == pytest.approx(
            [h[k] for h in full["history"]], rel=1e-6), k
    a = np.load(os.path.join(tmp_path / "full", "checkpoint_000000006", "state.npz"))
    b = np.load(os.path.join(tmp_path / "again", "checkpoint_000000006", "state.npz"))
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_subset_and_bad_input(data: dict) -> None:
    with pytest.raises(ConfigError, match="not 'vec'"):
        train_imagenet({**BASE, **data, "arch": "vec"})
    with pytest.raises(ConfigError, match="needs data_dir"):
        train_imagenet({**BASE, "data_dir": None})
    with pytest.raises(DataError, match="expects 1000"):
        train_imagenet({**BASE, **data, "num_classes": 1000})
    with pytest.raises(DataError, match="synthetic://CxNxS"):
        train_imagenet({**BASE, "data_dir": "synthetic://3x"})
    # read by 2 loader processes (training and evaluation; tests/test_imagenet_devices.py
    # checks that they give the threads' numbers)
    out = train_imagenet({**BASE, **data, "subset": 2, "epochs": 1, "arch": "mixer_s16",
                          "width": 8, "depth": 1, "patch_size": 4, "loader_processes": 2})
    assert out["train_size"] == 24 and out["batch_size"] == 16 and out["steps"] == 1
    assert out["test_size"] == 12 and 0.0 <= out["test_acc"] <= 1.0
