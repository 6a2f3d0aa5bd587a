"""Tests of the kernel approximation error tool (seed 000 §3.3.2, eq 3.12)."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from finegrain_tf.analysis import kernel_approx as ka  # noqa: E402
from finegrain_tf.ops.taylor_kernel import estimate_gamma, rbf_coefficients  # noqa: E402


@pytest.fixture(scope="module")
def pairs():
    feats = ka.random_relu_features(200, 16, seed=3)
    return ka.random_pairs(feats, 150, seed=4)


def test_random_features_and_pairs():
    feats = ka.random_relu_features(50, 8, seed=0)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0)
    assert feats.min() >= 0
    x, y = ka.random_pairs(np.arange(10)[:, None], 500, seed=1)
    assert np.all(x != y)
    with pytest.raises(ValueError, match="all-zero"):
        ka.l2_normalize(np.zeros((2, 3)))


def test_rbf_and_taylor_kernels_closed_form(pairs):
    x, y = pairs
    gamma = 0.7
    k = ka.rbf_kernel(x, y, gamma)
    loop = [math.exp(-gamma * sum((a - b) ** 2 for a, b in zip(u, v))) for u, v in zip(x, y)]
    np.testing.assert_allclose(k, loop, rtol=1e-12)
    # eq 3.11: the Taylor kernel with the RBF coefficients converges to the RBF kernel
    assert ka.taylor_truncation_error(x, y, 25, gamma) < 1e-12
    errors = [ka.taylor_truncation_error(x, y, p, gamma) for p in range(1, 6)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_order_one_has_no_sketch_noise(pairs):
    # p = 1: phi(x) = [alpha_0, alpha_1 x] exactly, so eq 3.12 equals the truncation error.
    x, y = pairs
    rec = ka.kernel_approximation_error(x, y, order=1, dim=8, gamma=0.9)
    assert rec["mean"] == pytest.approx(rec["truncation"], rel=1e-5)
    inner = ka.kernel_pooling_inner_products(x, y, 1, 8, 0.9)
    np.testing.assert_allclose(inner, ka.taylor_kernel(x, y, rbf_coefficients(0.9, 1)), rtol=1e-5)


def test_error_falls_with_sketch_dimension_and_gamma_estimate(pairs):
    x, y = pairs
    small = ka.kernel_approximation_error(x, y, order=3, dim=16)
    large = ka.kernel_approximation_error(x, y, order=3, dim=2048)
    assert small["gamma"] == pytest.approx(estimate_gamma(ka.l2_normalize(np.concatenate([x, y]))))
    assert large["mean"] < small["mean"]
    # sketch noise shrinks towards the truncation error as d grows (eq 3.10: variance ~ 1 / d)
    assert abs(large["mean"] - large["truncation"]) < abs(small["mean"] - small["truncation"])


def test_sweep_records_and_error_bound():
    feats = ka.random_relu_features(60, 8, seed=5)
    recs = ka.approximation_error_sweep(feats, dims=[8, 32], orders=[2, 3], gammas=[None, 0.5],
                                        num_pairs=40)
    assert len(recs) == 8
    assert {(r["order"], r["dim"]) for r in recs} == {(2, 8), (2, 32), (3, 8), (3, 32)}
    assert sum(r["gamma_estimated"] for r in recs) == 4
    assert all(r["mean"] >= 0 and r["num_pairs"] == 40 for r in recs)
    assert ka.error_bound(4, 100, 1.0, 0.5) == pytest.approx(2 * 3 / (100 * 0.25))
    c = 2.0
    assert ka.error_bound(2, 10, 0.5, 1.0) == pytest.approx(2 * c ** 2 * (c ** 4 - 1) / (c ** 2 - 1) / 10)


def test_pooled_relu_features_grow_more_similar_with_pooling():
    cosines = []
    for pool in (1, 4, 16):
        x = ka.pooled_relu_features(400, 64, pool, seed=3)
        assert x.shape == (400, 64) and np.all(x >= 0)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-12)
        gram = x @ x.T
        cosines.append((gram.sum() - np.trace(gram)) / (400 * 399))
    assert cosines[0] == pytest.approx(1 / np.pi, abs=0.02)  # ReLU of Gaussians: mean cosine 1/pi
    assert cosines[0] < cosines[1] < cosines[2] < 1.0
    with pytest.raises(ValueError, match="pool must be >= 1"):
        ka.pooled_relu_features(4, 3, 0)
