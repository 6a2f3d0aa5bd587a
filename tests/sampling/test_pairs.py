"""Siamese pair sampling."""

import numpy as np
import pytest

from finegrain_tf.sampling import sample_pairs


def test_sample_pairs():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    i, j, y = sample_pairs(labels, 200, positive_ratio=0.3, seed=0)
    assert len(i) == 200 and y.sum() == 60
    np.testing.assert_array_equal(labels[i] == labels[j], y == 1)
    assert np.all(i[y == 1] != j[y == 1])
    with pytest.raises(ValueError, match="1.2"):
        sample_pairs(labels, 4, positive_ratio=1.2)
