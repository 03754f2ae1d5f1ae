"""The SGD worker: eta_0 against direct eigen-decompositions and a closed form, the SGD update
against a numpy implementation, data order, early stopping, divergence, kill-and-resume."""

import math
import os
import tempfile
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workers.errors import ConfigError
from workers.eta0 import empirical_ntk, estimate_eta0, lanczos_max_eig, ntk_matvec
from workers.models import init_params, make_model
from workers.train import Trainer, _grad_and_data_loss, batch_loss, train, train_arrays

H, W, C, K = 8, 8, 3, 10


_PROTOTYPES = np.random.default_rng(123).standard_normal((K, H, W, C)).astype(np.float32)


def _split(rng, n, noise):
    labels = np.arange(n) % K
    x = _PROTOTYPES[labels] + noise * rng.standard_normal((n, H, W, C)).astype(np.float32)
    y = np.eye(K, dtype=np.float32)[labels] - 0.1
    return x, y, labels


def tiny_dataset(n_train=60, n_test=40, noise=1.0, seed=0):
    """Class prototypes plus Gaussian noise, 8x8x3: learnable in a few hundred steps."""
    rng = np.random.default_rng(seed)
    xt, yt, lt = _split(rng, n_train, noise)
    xv, yv, lv = _split(rng, 20, noise)
    xs, ys, ls = _split(rng, n_test, noise)
    return SimpleNamespace(x_train=xt, y_train=yt, labels_train=lt, x_val=xv, y_val=yv,
                           labels_val=lv, x_test=xs, y_test=ys, labels_test=ls, meta={})


BASE = dict(arch="fcn", width=64, depth=1, eta0_samples=32, eta0_inits=1, batch_size=10)


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def _apply(model):
    return lambda p, x: model.apply({"params": p}, x)


# ----------------------------------------------------------------------------- eta_0


@pytest.mark.parametrize("arch", ["fcn", "lcn", "gap"])
def test_ntk_matvec_and_lanczos_match_a_direct_eigendecomposition(arch):
    model = make_model(arch, 4, depth=1 if arch == "lcn" else 2)
    params = init_params(model, 3, (H, W, C))
    x = jnp.asarray(tiny_dataset().x_train[:12])
    dense = np.asarray(empirical_ntk(_apply(model), params, x), np.float64)
    assert np.allclose(dense, dense.T, rtol=1e-5, atol=1e-5 * np.abs(dense).max())
    mv = ntk_matvec(_apply(model), params, x)
    u = np.random.default_rng(0).standard_normal(12)
    np.testing.assert_allclose(np.asarray(mv(jnp.asarray(u, jnp.float32))), dense @ u,
                               rtol=1e-4, atol=1e-4 * np.abs(dense @ u).max())
    lam = lanczos_max_eig(lambda v: np.asarray(mv(jnp.asarray(v, jnp.float32))), 12)
    assert lam == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-4)


def test_lanczos_finds_the_top_eigenvalue_of_a_known_spectrum():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    evals = np.linspace(0.1, 1.0, 50)
    evals[-1] = 1.3  # gap of 0.3 to the next: converges in few iterations
    a = (q * evals) @ q.T
    assert lanczos_max_eig(lambda v: a @ v, 50, rtol=1e-12) == pytest.approx(1.3, rel=1e-9)
    assert lanczos_max_eig(lambda v: a @ v, 50) == pytest.approx(1.3, rel=1e-5)


def test_eta0_of_a_linear_model_matches_the_closed_form():
    """depth 0: f(x) = sqrt(w_var/d) x.omega + sqrt(b_var) beta, so Theta_hat = K (w_var x.x'/d
    + b_var) exactly, whatever the initialisation; eta_0 = 2 n K / lambda_max."""
    x = tiny_dataset().x_train[:20].astype(np.float64)
    model = make_model("fcn", 1, depth=0, w_var=2.0, b_var=0.01)
    flat = x.reshape(20, -1)
    theta = K * (2.0 * flat @ flat.T / flat.shape[1] + 0.01)
    expected = 2 * 20 * K / np.linalg.eigvalsh(theta)[-1]
    got = estimate_eta0(model, x.astype(np.float32), inits=2)
    assert got["eta0"] == pytest.approx(expected, rel=1e-4)
    assert len(got["lambda_max"]) == 2 and got["n"] == 20


# ----------------------------------------------------------------------------- SGD


def test_sgd_steps_match_a_numpy_implementation_of_the_paper_update():
    """Linear model (depth 0): loss 1/(2KB) sum |f - y|^2 + l2/2 |theta|^2, momentum 0.9."""
    ds = tiny_dataset(n_train=30)
    model = make_model("fcn", 1, depth=0)
    params = init_params(model, 7, (H, W, C))
    lr, l2, mom = 0.05, 1e-2, 0.9
    tr = Trainer(model, ds.x_train, ds.y_train, lr=lr, batch_size=8, momentum=mom, l2=l2,
                 seed=4, loop="device")
    state, info = tr.run(tr.init_state(params), 0, 7)
    assert info["steps_done"] == 7 and info["bad_step"] == -1
    tr_host = Trainer(model, ds.x_train, ds.y_train, lr=lr, batch_size=8, momentum=mom, l2=l2,
                      seed=4, loop="host")
    state_host, _ = tr_host.run(tr_host.init_state(params), 0, 7)
    for u, v in zip(_leaves(state), _leaves(state_host), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)

    d = H * W * C
    wk = np.asarray(params["readout"]["kernel"], np.float64)
    bk = np.asarray(params["readout"]["bias"], np.float64)
    vw, vb = np.zeros_like(wk), np.zeros_like(bk)
    a, s = math.sqrt(2.0 / d), math.sqrt(0.01)
    for step in range(7):
        idx = tr.batch_indices(step)
        xb = ds.x_train[idx].reshape(len(idx), -1).astype(np.float64)
        r = a * xb @ wk + s * bk - ds.y_train[idx]
        gw = a * xb.T @ r / (K * len(idx)) + l2 * wk
        gb = s * r.sum(0) / (K * len(idx)) + l2 * bk
        vw, vb = gw + mom * vw, gb + mom * vb
        wk, bk = wk - lr * vw, bk - lr * vb
    np.testing.assert_allclose(np.asarray(state["params"]["readout"]["kernel"]), wk,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state["params"]["readout"]["bias"]), bk,
                               rtol=1e-4, atol=1e-5)


def test_the_loops_step_on_the_full_objective_and_monitor_its_data_term():
    ds = tiny_dataset(n_train=20)
    model = make_model("gap", 4, depth=1)
    params = init_params(model, 3, (H, W, C))
    xb, yb, l2 = jnp.asarray(ds.x_train[:8]), jnp.asarray(ds.y_train[:8]), 0.05
    g, data = _grad_and_data_loss(model)(params, xb, yb, l2)
    g_ref = jax.grad(lambda p: batch_loss(model, p, xb, yb, l2))(params)
    for u, v in zip(_leaves(g), _leaves(g_ref), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(data, batch_loss(model, params, xb, yb, 0.0), rtol=1e-6)
    assert float(batch_loss(model, params, xb, yb, l2)) > float(data) + 1e-3  # l2 is not in it
    res = train_arrays({**BASE, "inference": "nn_plus", "l2": 1e-3, "max_steps": 10,
                        "eval_every": 10}, ds)
    assert res["history"][-1]["l2_term"] > 0


def test_batch_order_is_a_permutation_per_epoch_and_a_function_of_seed_and_step():
    ds = tiny_dataset(n_train=60)
    model = make_model("fcn", 2, depth=1)
    tr = Trainer(model, ds.x_train, ds.y_train, lr=0.1, batch_size=10, seed=3)
    epoch0 = np.concatenate([tr.batch_indices(s) for s in range(6)])
    epoch1 = np.concatenate([tr.batch_indices(s) for s in range(6, 12)])
    assert sorted(epoch0) == list(range(60)) and sorted(epoch1) == list(range(60))
    assert not np.array_equal(epoch0, epoch1)
    tr2 = Trainer(model, ds.x_train, ds.y_train, lr=0.1, batch_size=10, seed=3)
    assert np.array_equal(tr2.batch_indices(9), tr.batch_indices(9))
    tr3 = Trainer(model, ds.x_train, ds.y_train, lr=0.1, batch_size=10, seed=4)
    assert not np.array_equal(tr3.batch_indices(9), tr.batch_indices(9))


@pytest.mark.parametrize("loop", ["host", "device"])
def test_a_run_split_into_pieces_is_bit_identical(loop):
    ds = tiny_dataset(n_train=50)
    model = make_model("gap", 4, depth=2)
    params = init_params(model, 1, (H, W, C))
    tr = Trainer(model, ds.x_train, ds.y_train, lr=0.3, batch_size=10, l2=1e-3, seed=2,
                 loop=loop)
    whole, _ = tr.run(tr.init_state(params), 0, 23)
    part = tr.init_state(params)
    for a, b in ((0, 4), (4, 5), (9, 14)):   # crosses epoch boundaries (5 steps per epoch)
        part, info = tr.run(part, a, b)
        assert info["steps_done"] == b
    for u, v in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(part),
                    strict=True):
        assert np.array_equal(np.asarray(u), np.asarray(v))


def test_host_and_device_loops_report_the_same_divergence_step():
    # The host loop reads losses in groups of host_sync_every steps; it must still name the
    # first bad step, as the device loop does, wherever that step falls in a group.
    ds = tiny_dataset(n_train=50)
    model = make_model("fcn", 8, depth=2)
    params = init_params(model, 1, (H, W, C))
    seen = set()
    for lr, limit in ((62.0, 10.0), (70.0, 1e2), (70.0, 1e4), (500.0, 1e2)):
        tr = Trainer(model, ds.x_train, ds.y_train, lr=lr, batch_size=10, seed=2,
                     diverge_loss=limit, loop="device")
        ref = tr.run(tr.init_state(params), 3, 60)[1]
        assert ref["bad_step"] >= 3
        for every in (1, 3, 16):
            tr = Trainer(model, ds.x_train, ds.y_train, lr=lr, batch_size=10, seed=2,
                         diverge_loss=limit, loop="host")
            tr.host_sync_every = every
            info = tr.run(tr.init_state(params), 3, 60)[1]
            assert (info["bad_step"], info["steps_done"]) == (ref["bad_step"], ref["steps_done"])
            np.testing.assert_allclose(info["bad_loss"], ref["bad_loss"], rtol=1e-4)
            np.testing.assert_allclose(info["mean_loss"], ref["mean_loss"], rtol=1e-5)
            seen.add((ref["bad_step"] - 3) % every)
    assert len(seen) > 2  # bad steps at several positions inside a group


# ----------------------------------------------------------------------------- the worker


def test_training_learns_and_stops_early_at_full_training_accuracy():
    ds = tiny_dataset()
    res = train_arrays({**BASE, "inference": "nn", "max_steps": 2000, "eval_every": 20}, ds)
    assert res["status"] == "completed" and res["error"] is None
    assert res["train_acc"] == 1.0 and res["success"]
    assert res["steps"] < 2000 and res["steps"] % 20 == 0        # stopped at an evaluation
    assert res["history"][-1]["step"] == res["steps"]
    assert all(h["train_acc"] < 1.0 for h in res["history"][:-1])
    assert res["best_test_acc"] >= 0.25                           # chance is 0.1
    assert res["best_test_acc"] == max(h["test_acc"] for h in res["history"])
    assert res["lr"] == res["eta0"] and res["l2"] == 0.0


def test_divergence_is_reported_with_step_and_reason():
    res = train_arrays({**BASE, "eta0": 1e4, "max_steps": 100, "eval_every": 10},
                       tiny_dataset())
    assert res["status"] == "diverged" and not res["success"]
    assert res["steps"] < 10
    assert f"at step {res['steps']}" in res["error"]
    assert "loss" in res["error"]


def test_killed_and_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path):
    ds = tiny_dataset()
    cfg = {**BASE, "arch": "gap", "width": 4, "eta0_samples": 16, "inference": "nn_plus",
           "max_steps": 60,
           "eval_every": 10, "checkpoint_every": 15, "early_stop_train_acc": 2.0}

    full_reports = []
    full = train_arrays({**cfg, "work_dir": str(tmp_path / "a")}, ds,
                        lambda m, d: full_reports.append((m["step"], d)))
    assert [s for s, _ in full_reports] == [10, 15, 20, 30, 40, 45, 50, 60]
    assert [s for s, d in full_reports if d] == [15, 30, 45, 60]

    class Killed(Exception):
        pass

    seen = []

    def dying(metrics, ckpt):
        seen.append(ckpt)
        if metrics["step"] == 30:
            raise Killed

    with pytest.raises(Killed):
        train_arrays({**cfg, "work_dir": str(tmp_path / "b")}, ds, dying)
    ckpt = seen[-1]
    assert ckpt is not None and ckpt.endswith("checkpoint_000000030")
    resumed = train_arrays({**cfg, "work_dir": str(tmp_path / "c"), "resume_from": ckpt}, ds)
    for key in ("status", "best_test_acc", "best_train_acc", "best_step", "test_acc",
                "test_mse", "val_acc", "train_acc", "train_loss", "steps", "eta0", "lr",
                "history"):
        assert resumed[key] == full[key], key
    assert full["steps"] == 60


def test_a_stop_between_evaluations_checkpoints_there_and_resumes_bit_for_bit(tmp_path,
                                                                             monkeypatch):
    """`should_stop` is read after each run of STOP_CHECK_STEPS steps, also inside an
    evaluation interval (the paper preset evaluates every 10,000 steps, longer than the
    driver's grace): a stop at step 15 of a 20-step interval checkpoints step 15, and the
    resumed run ends with every number of the uninterrupted one, train_loss (a mean over the
    whole interval, across the stop) and history included."""
    import workers.train as train_mod

    monkeypatch.setattr(train_mod, "STOP_CHECK_STEPS", 5)
    ds = tiny_dataset()
    cfg = {**BASE, "arch": "fcn", "width": 8, "eta0_samples": 16, "max_steps": 40,
           "eval_every": 20, "checkpoint_every": 20, "early_stop_train_acc": 2.0}
    full = train_arrays({**cfg, "work_dir": str(tmp_path / "a")}, ds,
                        should_stop=lambda: False)
    asked = []

    def stop_at_third_check() -> bool:
        asked.append(1)
        return len(asked) == 3  # after steps 5, 10, 15

    cut = train_arrays({**cfg, "work_dir": str(tmp_path / "b")}, ds,
                       should_stop=stop_at_third_check)
    assert cut["status"] == "interrupted" and cut["steps"] == 15
    assert cut["checkpoint"].endswith("checkpoint_000000015")
    resumed = train_arrays({**cfg, "work_dir": str(tmp_path / "c"),
                            "resume_from": cut["checkpoint"]}, ds)
    for key in ("status", "best_test_acc", "best_train_acc", "best_step", "test_acc",
                "test_mse", "train_acc", "train_loss", "steps", "history"):
        assert resumed[key] == full[key], key
    # the cuts move no parameter: the run without them ends on the same model
    monkeypatch.setattr(train_mod, "STOP_CHECK_STEPS", 500)
    whole = train_arrays({**cfg, "work_dir": str(tmp_path / "d")}, ds)
    assert whole["test_acc"] == full["test_acc"] and whole["test_mse"] == full["test_mse"]
    np.testing.assert_allclose(whole["train_loss"], full["train_loss"], rtol=1e-6)


def test_resume_with_a_different_config_is_refused(tmp_path):
    ds = tiny_dataset()
    cfg = {**BASE, "max_steps": 10, "eval_every": 10, "checkpoint_every": 10,
           "work_dir": str(tmp_path)}
    res = train_arrays(cfg, ds)
    with pytest.raises(ConfigError, match="different config"):
        train_arrays({**cfg, "width": 32, "seed": 5, "resume_from": res["checkpoint"]}, ds)
    with pytest.raises(ConfigError, match="not a symsweep checkpoint"):
        train_arrays({**cfg, "resume_from": str(tmp_path / "nope")}, ds)


def test_bad_inference_is_a_config_error():
    with pytest.raises(ConfigError, match="nn or nn_plus"):
        train_arrays({**BASE, "inference": "ntk"}, tiny_dataset())


def test_train_on_the_synthetic_dataset_end_to_end():
    cfg = {**BASE, "dataset": "synthetic", "image_size": 8, "train_size": 100,
           "test_size": 50, "val_size": 20, "max_steps": 40, "eval_every": 20,
           "inference": "nn_plus", "lr_factor": 1.0}
    res = train(cfg)
    assert res["status"] == "completed" and res["steps"] in (20, 40)
    assert 0.0 <= res["test_acc"] <= 1.0 and math.isfinite(res["test_mse"])
    assert res["eta0"] > 0 and res["n_params"] > 0
    assert res["lr"] == res["eta0"] and res["l2"] == 1e-7   # lr_factor overridden, l2 kept


def test_checkpoints_in_a_temporary_dir_are_removed_when_the_run_ends(tmp_path, monkeypatch):
    # Without work_dir only the report callback sees the checkpoints (Tune copies each one as
    # it is reported); a dir left per run would fill a node's disk over a paper-scale sweep.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def copy_on_report(metrics, ckpt):
        if ckpt:
            assert os.path.isdir(ckpt)  # alive while the callback runs
            seen.append(ckpt)

    res = train_arrays({**BASE, "max_steps": 20, "eval_every": 10, "checkpoint_every": 10},
                       tiny_dataset(), copy_on_report)
    assert len(seen) == 2 and res["checkpoint"] is None
    assert all(c.startswith(str(tmp_path)) for c in seen)
    assert list(tmp_path.iterdir()) == []

    class Killed(Exception):
        pass

    def dying(metrics, ckpt):
        raise Killed

    with pytest.raises(Killed):
        train_arrays({**BASE, "max_steps": 20, "eval_every": 10, "checkpoint_every": 10},
                     tiny_dataset(), dying)
    assert list(tmp_path.iterdir()) == []
