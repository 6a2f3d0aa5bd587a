"""Tests of the tensor-sketch maths (seed 000 eq 3.8-3.11) against naive float64 numpy loops."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.sketch_baselines import (autodiff_pooled_tensor_sketches,  # noqa: E402
                                         dense_count_sketch, sparse_count_sketch)
from finegrain_tf.ops import taylor_kernel as tk  # noqa: E402
from finegrain_tf.ops import tensor_sketch as ts  # noqa: E402
from tests.ops.sketch_reference import ref_count_sketch, ref_tensor_sketch  # noqa: E402

RNG = np.random.RandomState(1234)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def _drawn(seed, c, dims, groups):
    drawn = ts.draw_count_sketch_hashes(seed, c, dims, groups)
    return [h for h, _ in drawn], [s for _, s in drawn]


@pytest.mark.parametrize("jit", [False, True])
def test_count_sketch_and_baselines_match_reference(jit):
    dims = [5, 8]
    hashes, signs = _drawn(3, 6, dims, [2, 3])
    x = RNG.randn(4, 6).astype(np.float32)
    library = tf.function(lambda v: ts.count_sketch(v, hashes, signs, dims), jit_compile=jit)
    outs = {"library": library(x), "sparse": sparse_count_sketch(x, hashes, signs, dims),
            "dense": dense_count_sketch(x, hashes, signs, dims)}
    for g, (h, s) in enumerate(zip(hashes, signs)):
        expected = np.array([[ref_count_sketch(v, h[t], s[t], dims[g]) for t in range(len(h))]
                             for v in x])
        for out in outs.values():
            _close(out[g].numpy(), expected)


def test_hashes_deterministic_in_seed():
    a = ts.draw_count_sketch_hashes(11, 10, [16], [3])[0]
    b = ts.draw_count_sketch_hashes(11, 10, [16], [3])[0]
    c = ts.draw_count_sketch_hashes(12, 10, [16], [3])[0]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("jit", [False, True])
def test_pooled_tensor_sketches_match_explicit_convolutions(jit):
    dims, orders = [7, 5], [[2, 3], [4]]
    hashes, signs = _drawn(5, 6, dims, [3, 4])
    x = RNG.randn(2, 3, 6).astype(np.float32)
    fn = tf.function(lambda v: ts.pooled_tensor_sketches(v, hashes, signs, dims, orders),
                     jit_compile=jit)
    outs = fn(x)
    k_of = [(0, 2), (0, 3), (1, 4)]
    for out, (g, k) in zip(outs, k_of):
        expected = np.array([np.mean([ref_tensor_sketch(v, hashes[g][:k], signs[g][:k], dims[g])
                                      for v in img.astype(np.float64)], 0) for img in x])
        _close(out.numpy(), expected)


def test_tensor_sketch_unbiased_over_seeds():
    c, d, seeds = 6, 8, 400
    x = np.array([0.9, -0.3, 0.5, 0.2, -0.7, 0.4])
    y = np.array([0.6, 0.1, 0.8, -0.4, -0.2, 0.3])
    xy = np.stack([x, y]).astype(np.float32)[:, None, :]

    @tf.function
    def inner(h, s):
        ts2, ts3 = ts.pooled_tensor_sketches(xy, [h], [s], [d], [[2, 3]])
        return tf.reduce_sum(ts2[0] * ts2[1]), tf.reduce_sum(ts3[0] * ts3[1])

    vals = []
    for seed in range(seeds):
        ((h, s),) = ts.draw_count_sketch_hashes(seed, c, [d], [3])
        vals.append([float(v) for v in inner(tf.constant(h), tf.constant(s))])
    vals = np.array(vals)
    for k, col in ((2, 0), (3, 1)):
        target = float(x @ y) ** k
        mean, std = vals[:, col].mean(), vals[:, col].std(ddof=1)
        assert std > 0
        assert abs(mean - target) < 4.0 * std / math.sqrt(seeds), (k, mean, target, std)


@pytest.mark.parametrize("dims,orders", [([8], [[2, 3, 4]]), ([5, 7], [[2, 4], [3]]), ([6], [[3]]),
                                         ([6], [[1, 2]])])
@pytest.mark.parametrize("jit", [False, True])
def test_hand_written_gradient_equals_autodiff(dims, orders, jit):
    hashes, signs = _drawn(2, 6, dims, [max(o) for o in orders])
    x = tf.constant(RNG.randn(3, 4, 6).astype(np.float32))
    weights = [tf.constant(RNG.randn(3, d).astype(np.float32)) for d, o in zip(dims, orders) for _ in o]

    def value_and_grad(fn, jit):
        @tf.function(jit_compile=jit)
        def step(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                outs = fn(v, hashes, signs, dims, orders)
                loss = sum(tf.reduce_sum(o * w) for o, w in zip(outs, weights))
            return outs, tape.gradient(loss, v)
        outs, grad = step(x)
        return [o.numpy() for o in outs], grad.numpy()

    values, grad = value_and_grad(ts.pooled_tensor_sketches, jit)
    ref_values, ref_grad = value_and_grad(autodiff_pooled_tensor_sketches, False)
    for a, b in zip(values, ref_values):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)
    assert np.any(grad != 0)


def test_rbf_coefficients_closed_form():
    g = 0.35
    a = tk.rbf_coefficients(g, 4)
    expected = [math.exp(-2 * g) * (2 * g) ** i / math.factorial(i) for i in range(5)]
    np.testing.assert_allclose(a ** 2, expected, rtol=1e-12)
    an = tk.rbf_coefficients(g, 4, normalized=True)
    np.testing.assert_allclose(an ** 2, np.array(expected) / np.sum(expected), rtol=1e-12)
    # Taylor kernel -> RBF for L2-normalised x, y as p grows (eq 3.11)
    x, y = RNG.randn(2, 5)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    taylor = sum(v * (x @ y) ** i for i, v in enumerate(tk.rbf_coefficients(g, 12) ** 2))
    assert taylor == pytest.approx(math.exp(-g * np.sum((x - y) ** 2)), rel=1e-10)


def test_estimate_gamma_matches_pair_loop():
    feats = np.abs(RNG.randn(2, 3, 2, 5))
    vecs = feats.reshape(-1, 5)
    pairs = [vecs[i] @ vecs[j] for i in range(len(vecs)) for j in range(len(vecs)) if i != j]
    assert tk.estimate_gamma(feats) == pytest.approx(1.0 / np.mean(pairs), rel=1e-12)
    acc = tk.PairMeanAccumulator()
    acc.update(feats[:1])
    acc.update(feats[1:])
    assert acc.gamma() == pytest.approx(1.0 / np.mean(pairs), rel=1e-12)
    with pytest.raises(ValueError, match="mean inner product"):
        tk.estimate_gamma(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        tk.estimate_gamma(np.ones((1, 3)))
