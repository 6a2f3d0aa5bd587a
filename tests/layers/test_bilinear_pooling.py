"""Tests of the bilinear pooling baselines (seed 000 Table 3.1) against naive float64 numpy loops."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from finegrain_tf.layers import BilinearPooling, CompactBilinearPooling  # noqa: E402
from tests.ops.sketch_reference import ref_ssqrt_l2, ref_tensor_sketch  # noqa: E402

X_MAPS = np.random.RandomState(1234).uniform(0.1, 1.0, size=(2, 2, 3, 6)).astype(np.float32)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def test_compact_bilinear_is_tensor_sketch_of_order_two():
    layer = CompactBilinearPooling(dim=10, normalize=False, seed=4)
    y = layer(X_MAPS).numpy()
    h, s, d = layer.sketch_hashes()[2]
    expected = np.array([np.mean([ref_tensor_sketch(v, h, s, d) for v in m.reshape(-1, 6)], 0)
                         for m in X_MAPS.astype(np.float64)])
    _close(y, expected)
    yn = CompactBilinearPooling(dim=10, seed=4)(X_MAPS).numpy()
    _close(yn, ref_ssqrt_l2(expected))


def test_bilinear_pooling_matches_outer_products():
    y = BilinearPooling()(X_MAPS).numpy()
    expected = []
    for m in X_MAPS.astype(np.float64):
        vecs = m.reshape(-1, 6)
        expected.append(np.mean([np.outer(v, v).reshape(-1) for v in vecs], 0))
    _close(y, ref_ssqrt_l2(np.array(expected)))


@pytest.mark.parametrize("layer_fn", [lambda: CompactBilinearPooling(dim=8),
                                      lambda: BilinearPooling()])
def test_baseline_gradients_finite(layer_fn):
    x = tf.constant(X_MAPS)
    layer = layer_fn()
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) ** 3)
    g = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(g)) and np.any(g != 0)



def test_shapes_and_validation():
    assert CompactBilinearPooling(dim=12).compute_output_shape((None, 4, 4, 8)) == (None, 12)
    assert BilinearPooling().compute_output_shape((None, 4, 4, 8)) == (None, 64)
    with pytest.raises(ValueError, match="dim"):
        CompactBilinearPooling(dim=0)
