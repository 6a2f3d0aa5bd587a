"""Kernel approximation error of kernel pooling (seed 000 §3.3.2, eq 3.12, Fig 3.6).

For L2-normalised features x, y the Gaussian RBF kernel is
K_RBF(x, y) = exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma x^T y) (eq 3.11), and kernel
pooling with alpha_i^2 = exp(-2 gamma) (2 gamma)^i / i! approximates it by phi(x)^T phi(y). The
relative error of one pair is

    eps = |phi(x)^T phi(y) - K_RBF(x, y)| / K_RBF(x, y)                                   (eq 3.12)

and the figure of merit is its mean over many feature pairs, swept over the sketch dimension d_bar
(d_i = d_bar for every order i >= 2), the order p and gamma. The error has two parts: the
truncation of the Taylor series at order p (`taylor_truncation_error`, what d_bar -> infinity gives)
and the sketching noise (eq 3.10).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from finegrain_tf.layers.kernel_pooling import KernelPooling
from finegrain_tf.ops.taylor_kernel import estimate_gamma, rbf_coefficients


def l2_normalize(features) -> np.ndarray:
    """Rows of a [N, c] array scaled to unit L2 norm (float64)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, c], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("features contain an all-zero row, which cannot be L2-normalised")
    return x / norms


def random_relu_features(num: int, dim: int, seed: int = 0) -> np.ndarray:
    """L2-normalised ReLU(N(0, 1)) vectors [num, dim]: a stand-in for post-ReLU CNN activations
    (non-negative, half sparse, mean cosine similarity 1/pi, so gamma = 1/mean <x, y> ~ pi)."""
    rs = np.random.RandomState(seed)
    x = np.maximum(rs.randn(num, dim), 0.0)
    x[x.sum(1) == 0, 0] = 1.0
    return l2_normalize(x)


def pooled_relu_features(num: int, dim: int, pool: int, seed: int = 0) -> np.ndarray:
    """L2-normalised means of `pool` independent ReLU(N(0, 1)) vectors [num, dim].

    A stand-in for *average-pooled* post-ReLU CNN activations (what kernel pooling's per-image
    features and Fig 3.6's inputs look like): pooling makes the vectors dense and similar, the
    mean cosine rising from 1/pi (pool = 1, `random_relu_features`) towards 1 as `pool` grows,
    so the estimated gamma = 1 / mean <x, y> falls from ~pi towards 1.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool!r}")
    rs = np.random.RandomState(seed)
    x = np.zeros((num, dim))
    for _ in range(pool):
        x += np.maximum(rs.randn(num, dim), 0.0)
    x[x.sum(1) == 0, 0] = 1.0
    return l2_normalize(x / pool)


def rbf_kernel(x, y, gamma: float) -> np.ndarray:
    """exp(-gamma ||x_n - y_n||^2) for aligned rows of x, y [N, c] (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.exp(-gamma * np.sum((x - y) ** 2, axis=1))


def taylor_kernel(x, y, coefficients) -> np.ndarray:
    """sum_i alpha_i^2 (x_n^T y_n)^i (eq 3.6) for aligned rows."""
    dots = np.sum(np.asarray(x, np.float64) * np.asarray(y, np.float64), axis=1)
    return sum(a * a * dots ** i for i, a in enumerate(np.asarray(coefficients, np.float64)))


def taylor_truncation_error(x, y, order: int, gamma: float) -> float:
    """Mean eq 3.12 error of the exact order-p Taylor kernel (the d_bar -> infinity limit)."""
    k = rbf_kernel(x, y, gamma)
    return float(np.mean(np.abs(taylor_kernel(x, y, rbf_coefficients(gamma, order)) - k) / k))


def kernel_pooling_inner_products(x, y, order: int, dim: int, gamma: float, seed: int = 0,
                                  batch_size: int = 4096) -> np.ndarray:
    """phi(x_n)^T phi(y_n) of `KernelPooling` (Algorithm 1, fixed eq 3.11 coefficients, no
    normalisation) for aligned rows of x, y [N, c]; float64 result of the float32 layer."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must be aligned [N, c] arrays, got {x.shape} and {y.shape}")
    layer = KernelPooling(order=order, dims=dim, coefficients=list(rbf_coefficients(gamma, order)),
                          normalize=False, seed=seed)
    out = []
    for start in range(0, len(x), batch_size):
        px = layer(tf.constant(x[start:start + batch_size])).numpy().astype(np.float64)
        py = layer(tf.constant(y[start:start + batch_size])).numpy().astype(np.float64)
        out.append(np.sum(px * py, axis=1))
    return np.concatenate(out)


def kernel_approximation_error(x, y, order: int, dim: int, gamma: float | None = None,
                               seed: int = 0) -> dict:
    """Mean relative error (eq 3.12) of kernel pooling against the Gaussian RBF kernel.

    x, y: aligned [N, c] feature pairs; they are L2-normalised here (eq 3.11 assumes it).
    gamma: None = `estimate_gamma` on the union of x and y (1 / mean <x, y>, §3.3.2).
    Returns {"mean", "median", "std", "truncation", "gamma", "order", "dim", "num_pairs"}.
    """
    x, y = l2_normalize(x), l2_normalize(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    if gamma is None:
        gamma = estimate_gamma(np.concatenate([x, y]))
    k = rbf_kernel(x, y, gamma)
    approx = kernel_pooling_inner_products(x, y, order, dim, gamma, seed)
    eps = np.abs(approx - k) / k
    # Why the relative error can be large: the sketch noise of order i scales with alpha_i^2 (unit
    # vectors), the target with K itself; `noise_to_kernel` = alpha_p^2 / mean K.
    alphas = rbf_coefficients(gamma, order)
    return {"mean": float(eps.mean()), "median": float(np.median(eps)), "std": float(eps.std()),
            "truncation": taylor_truncation_error(x, y, order, gamma), "gamma": float(gamma),
            "order": int(order), "dim": int(dim), "num_pairs": int(len(x)),
            "mean_kernel": float(k.mean()), "mean_cosine": float(np.mean(np.sum(x * y, axis=1))),
            "noise_to_kernel": float(alphas[-1] ** 2 / k.mean())}


def random_pairs(features, num_pairs: int, seed: int = 0):
    """`num_pairs` random pairs (i != j) of rows of `features` [N, c] -> (x, y)."""
    features = np.asarray(features)
    n = len(features)
    if n < 2:
        raise ValueError(f"need at least 2 features to draw pairs, got {n}")
    rs = np.random.RandomState(seed)
    i = rs.randint(0, n, size=num_pairs)
    j = (i + rs.randint(1, n, size=num_pairs)) % n
    return features[i], features[j]


def approximation_error_sweep(features, dims: Sequence[int], orders: Sequence[int],
                              gammas: Iterable[float | None] = (None,), num_pairs: int = 2000,
                              seed: int = 0) -> list[dict]:
    """The Fig 3.6 sweep: `kernel_approximation_error` for every (gamma, p, d_bar).

    A gamma of None is the §3.3.2 estimate 1 / mean <x, y> over the L2-normalised features.
    """
    feats = l2_normalize(features)
    x, y = random_pairs(feats, num_pairs, seed)
    records = []
    for gamma in gammas:
        g = estimate_gamma(feats) if gamma is None else float(gamma)
        for order in orders:
            for dim in dims:
                rec = kernel_approximation_error(x, y, order, dim, g, seed)
                rec["gamma_estimated"] = gamma is None
                records.append(rec)
    return records


def error_bound(order: int, dim: int, cos_theta: float, epsilon: float) -> float:
    """Right-hand side of eq 3.10: P[|phi^T phi - K| >= eps K] <= Delta(p) / (d_min eps^2)."""
    c = 1.0 / cos_theta
    if math.isclose(abs(c), 1.0):
        delta = 2.0 * (order - 1)
    else:
        delta = 2.0 * c ** 2 * (c ** (2 * order) - 1.0) / (c ** 2 - 1.0)
    return delta / (dim * epsilon ** 2)
