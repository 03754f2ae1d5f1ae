"""The one accuracy / MSE implementation (workers/metrics.py), against hand-computed values."""

import numpy as np
import pytest

from workers.errors import ConfigError
from workers.metrics import accuracy, mse


def test_accuracy_by_hand():
    pred = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, -1.0], [0.4, 0.0, 0.6]])
    assert accuracy(pred, [0, 2, 0, 2]) == 0.75  # the third row's argmax is 1, not 0
    assert np.isnan(accuracy(np.zeros((0, 3)), []))
    with pytest.raises(ConfigError, match="3 rows, labels 2"):
        accuracy(pred[:3], [0, 1])


def test_mse_is_the_mean_over_all_entries():
    y = np.eye(3)[[0, 2]] - 0.1               # one-hot minus 0.1, as the protocol's targets
    pred = y + np.array([[0.1, 0.0, 0.0], [0.0, -0.3, 0.0]])
    assert mse(pred, y) == pytest.approx((0.01 + 0.09) / 6, rel=1e-15)
    assert mse(pred.astype(np.float32), y, dtype=np.float32) == pytest.approx(0.1 / 6, rel=1e-6)
    assert np.isnan(mse(np.zeros((0, 3)), np.zeros((0, 3))))
    with pytest.raises(ConfigError, match="differs from target shape"):
        mse(pred, y[:1])
