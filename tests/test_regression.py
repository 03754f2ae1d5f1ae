"""Kernel regression: interpolation as diag_reg -> 0, agreement with a direct solve, errors."""

import numpy as np
import pytest

from workers.errors import ConfigError, DataError
from workers.kernels import kernel_matrices
from workers.regression import accuracy, kernel_predict, mse, regression_metrics


@pytest.fixture(scope="module")
def tiny_problem():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 6, 6, 3))
    labels = np.arange(30) % 10
    y = np.eye(10)[labels] - 0.1
    k = kernel_matrices(["fcn", "vec"], x, depth=3, dtype=np.float64)
    return x, y, labels, k


@pytest.mark.parametrize("arch", ["fcn", "vec"])
@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_interpolates_training_targets_as_reg_vanishes(tiny_problem, arch, kind):
    _, y, _, k = tiny_problem
    kxx = k[arch][kind]
    errs = [np.max(np.abs(kernel_predict(kxx, kxx, y, diag_reg=r) - y)) for r in (1e-2, 1e-5, 1e-9)]
    assert errs[0] > 1e-3  # a visible regularisation effect, so the limit is not vacuous
    assert errs[1] < errs[0] and errs[2] < errs[1]
    assert errs[2] < 1e-6


def test_matches_direct_numpy_solve(tiny_problem):
    _, y, _, k = tiny_problem
    kxx = k["vec"]["ntk"]
    train, test = np.arange(20), np.arange(20, 30)
    a, s = kxx[np.ix_(train, train)], kxx[np.ix_(test, train)]
    reg = 1e-4
    pred = kernel_predict(a, s, y[train], diag_reg=reg)
    direct = s @ np.linalg.solve(a + reg * np.mean(np.diag(a)) * np.eye(20), y[train])
    np.testing.assert_allclose(pred, direct, rtol=1e-9, atol=1e-12)
    # 1-D targets keep their shape.
    np.testing.assert_allclose(kernel_predict(a, s, y[train, 0], diag_reg=reg), direct[:, 0],
                               rtol=1e-9, atol=1e-12)


def test_float32_kernel_is_solved_in_float64(tiny_problem):
    _, y, _, k = tiny_problem
    kxx = k["fcn"]["ntk"]
    p64 = kernel_predict(kxx, kxx[:5], y)
    p32 = kernel_predict(kxx.astype(np.float32), kxx[:5].astype(np.float32), y)
    assert p32.dtype == np.float64
    np.testing.assert_allclose(p32, p64, atol=1e-2)


def test_metrics():
    pred = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(pred, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert mse(pred, np.zeros_like(pred)) == pytest.approx(np.mean(pred**2))
    k = np.eye(3)
    m = regression_metrics(k, k, pred, pred, np.array([0, 1, 0]), diag_reg=0.0)
    assert m["test_acc"] == 1.0 and m["test_mse"] == pytest.approx(0.0, abs=1e-20)


def test_singular_kernel_names_the_remedy():
    v = np.ones((4, 1))
    k = v @ v.T  # rank one
    with pytest.raises(DataError, match="larger diag_reg"):
        kernel_predict(k, k, np.eye(4), diag_reg=0.0)
    # the remedy works
    assert np.all(np.isfinite(kernel_predict(k, k, np.eye(4), diag_reg=1e-3)))


def test_bad_inputs():
    k = np.eye(3)
    with pytest.raises(DataError, match="NaN"):
        kernel_predict(np.full((3, 3), np.nan), k, np.eye(3))
    with pytest.raises(ConfigError, match="rows"):
        kernel_predict(k, k, np.eye(4))
    with pytest.raises(ConfigError, match="square"):
        kernel_predict(np.ones((3, 2)), k, np.eye(3))
    with pytest.raises(ConfigError, match="diag_reg"):
        kernel_predict(k, k, np.eye(3), diag_reg=-1.0)
