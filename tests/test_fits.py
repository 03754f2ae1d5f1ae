"""Power-law fits and S-Dist (orchestrator.fits) against closed forms and Monte-Carlo."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.fits import (
    ensemble_accuracy,
    ensemble_mean,
    ensemble_mse,
    fit_power_law,
    s_dist,
    segment_fits,
)
from workers.errors import DataError


def test_exact_power_law_is_recovered():
    m = 320.0 * 2.0 ** np.arange(8)
    fit = fit_power_law(m, 3.7 * m ** -0.42)
    assert fit.slope == pytest.approx(-0.42, abs=1e-12)
    assert np.exp(fit.intercept) == pytest.approx(3.7, rel=1e-10)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.stderr == pytest.approx(0.0, abs=1e-10)
    assert (fit.n, fit.x_min, fit.x_max) == (8, 320.0, m[-1])
    np.testing.assert_allclose(fit.predict(m), 3.7 * m ** -0.42, rtol=1e-10)


def test_noisy_power_law_slope_and_stderr_match_monte_carlo():
    # log-normal noise: the OLS slope is unbiased and its standard error estimates the spread
    rng = np.random.default_rng(0)
    m = 100.0 * 2.0 ** np.arange(10)
    slopes, errs = [], []
    for _ in range(2000):
        y = 0.5 * m ** -0.3 * np.exp(0.1 * rng.standard_normal(m.size))
        f = fit_power_law(m, y)
        slopes.append(f.slope)
        errs.append(f.stderr)
        assert 0.0 < f.r2 <= 1.0
    slopes = np.array(slopes)
    # closed form of the slope's std: sigma / sqrt(Sxx) in log space
    lx = np.log(m)
    sd = 0.1 / np.sqrt(((lx - lx.mean()) ** 2).sum())
    assert slopes.mean() == pytest.approx(-0.3, abs=4 * sd / np.sqrt(2000))
    assert slopes.std() == pytest.approx(sd, rel=0.06)
    assert np.sqrt(np.mean(np.square(errs))) == pytest.approx(sd, rel=0.06)


def test_segment_fits_see_the_break_of_a_broken_power_law():
    # slope -0.2 up to m = 2560, then -0.6 (continuous at the break): DIDE's signature
    m = 320.0 * 2.0 ** np.arange(9)
    y = np.where(m <= 2560, m ** -0.2, 2560.0 ** 0.4 * m ** -0.6)
    fits = segment_fits(m[::-1], y[::-1], first=4, last=4)  # order must not matter
    assert fits["first"].slope == pytest.approx(-0.2, abs=1e-12)
    assert fits["last"].slope == pytest.approx(-0.6, abs=1e-12)
    assert fits["first"].x_max == 2560 and fits["last"].x_min == 2560 * 4
    assert -0.6 < fits["all"].slope < -0.2 and fits["all"].r2 < 1.0
    # a segment of one point has no slope; zero errors are dropped before taking logs
    short = segment_fits([10.0, 20.0, 40.0], [0.5, 0.25, 0.0], first=1, last=2)
    assert short["first"] is None
    assert short["last"].slope == pytest.approx(-1.0) and short["last"].n == 2


@pytest.mark.parametrize("x,y", [([1, 2, 3], [1, -1, 2]), ([1, 1], [1, 2]), ([1, 2], [1])])
def test_bad_fit_input_is_a_data_error(x, y):
    with pytest.raises(DataError):
        fit_power_law(x, y)


def test_s_dist_is_zero_for_identical_learners():
    rng = np.random.default_rng(1)
    ens = rng.standard_normal((10, 50, 10))
    assert s_dist(ens, ens) == 0.0
    assert s_dist(ens, ens[::-1]) == pytest.approx(0.0, abs=1e-24)  # same ensemble, reordered
    assert s_dist(ens.mean(0), ens) == pytest.approx(0.0, abs=1e-24)


def test_s_dist_closed_form_and_mean_before_distance():
    # A1_theta(x) = f(x) + theta g(x) with theta = +-1 balanced: E_theta A1 = f exactly, so
    # S-Dist(A1, h) = mean_x |f - h|^2. Averaging the distance over theta instead would add
    # mean_x |g|^2: the test fails if the ensemble mean is taken after the distance.
    rng = np.random.default_rng(2)
    n, k = 40, 10
    f, g, h = (rng.standard_normal((n, k)) for _ in range(3))
    a1 = np.stack([f + g, f - g, f + g, f - g])
    want = float(np.mean(np.sum((f - h) ** 2, axis=1)))
    assert s_dist(a1, h) == pytest.approx(want, rel=1e-12)
    after = float(np.mean([np.mean(np.sum((a - h) ** 2, axis=1)) for a in a1]))
    assert after == pytest.approx(want + np.mean(np.sum(g ** 2, axis=1)), rel=1e-12)
    assert s_dist(a1, h) < after - 1.0
    # symmetric, and both sides are ensembles
    a2 = np.stack([h + 2 * g, h - 2 * g])
    assert s_dist(a1, a2) == pytest.approx(want, rel=1e-12)
    assert s_dist(a2, a1) == pytest.approx(want, rel=1e-12)
    # constant offset c in every logit: |c|^2 K exactly
    assert s_dist(f, f + 0.5) == pytest.approx(0.25 * k, rel=1e-12)


def test_s_dist_monte_carlo_ensemble_of_gaussians():
    # members f + noise (std s): E S-Dist(ensemble of S, f) = K s^2 / S
    rng = np.random.default_rng(3)
    n, k, s, members = 400, 10, 0.3, 8
    f = rng.standard_normal((n, k))
    vals = [s_dist(f + s * rng.standard_normal((members, n, k)), f) for _ in range(50)]
    assert np.mean(vals) == pytest.approx(k * s * s / members, rel=0.02)


def test_ensemble_metrics_and_shape_errors():
    labels = np.array([0, 1, 2])
    y = np.eye(3)[labels] - 0.1
    # each member alone gets one of three right; their mean gets all three
    p1 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    p2 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p3 = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    ens = np.stack([p1, p2, p3])
    assert ensemble_accuracy(p1, labels) == pytest.approx(1 / 3)
    assert ensemble_accuracy(ens, labels) == 1.0
    assert ensemble_mse(ens, y) == pytest.approx(np.mean((ens.mean(0) - y) ** 2))
    np.testing.assert_array_equal(ensemble_mean(p1), p1)
    with pytest.raises(DataError):
        s_dist(np.zeros((2, 4, 3)), np.zeros((4, 2)))
    with pytest.raises(DataError):
        ensemble_mean(np.zeros(3))
    with pytest.raises(DataError):
        ensemble_mean(np.zeros((0, 3, 3)))
