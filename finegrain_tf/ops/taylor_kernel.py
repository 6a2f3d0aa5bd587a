"""The Taylor series kernel behind kernel pooling (seed 000 §3.3): RBF coefficients and gamma.

    K_Taylor(x, y) = sum_i alpha_i^2 (x^T y)^i                                         (eq 3.1, 3.6)
    alpha_i^2 = exp(-2 gamma) (2 gamma)^i / i!  ->  K_Taylor ~ exp(-gamma ||x - y||^2)  (eq 3.11)

for L2-normalised x, y, and gamma = 1 / mean <x, y> over pairs of distinct features (§3.3.2).
Pure numpy (float64): used by `layers.KernelPooling` and `analysis.kernel_approx`.
"""

from __future__ import annotations

import math

import numpy as np


def rbf_coefficients(gamma: float, order: int, normalized: bool = False) -> np.ndarray:
    """alpha_i = sqrt(exp(-2 gamma) (2 gamma)^i / i!), i = 0..order (eq 3.11, L2-normalised inputs).

    normalized=True replaces the global factor exp(-2 gamma) = 1 / sum_{i>=0} (2 gamma)^i / i! by its
    truncation 1 / sum_{i<=order} (2 gamma)^i / i! (so sum_i alpha_i^2 = 1). Only the overall scale
    changes, which the signed square root + L2 normalisation of §3.3.1 removes exactly, and the values
    stay representable for large gamma (exp(-2 gamma) underflows float32 beyond gamma ~ 44, which
    happens with the small raw features of a randomly initialised backbone).
    """
    if not (isinstance(gamma, (int, float, np.floating, np.integer)) and math.isfinite(gamma)
            and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    i = np.arange(order + 1, dtype=np.float64)
    log_terms = i * math.log(2.0 * gamma) - np.array([math.lgamma(k + 1) for k in i])
    if normalized:
        top = log_terms.max()
        log_sq = log_terms - (top + math.log(np.sum(np.exp(log_terms - top))))
    else:
        log_sq = -2.0 * gamma + log_terms
    return np.exp(0.5 * log_sq)


class PairMeanAccumulator:
    """Streams sum_i x_i and sum_i ||x_i||^2 (float64) to estimate gamma over many batches.

    The mean of <x_i, x_j> over all N (N - 1) ordered pairs i != j is computed exactly in O(N c) as
    (||sum_i x_i||^2 - sum_i ||x_i||^2) / (N (N - 1)).
    """

    def __init__(self):
        self.total = None
        self.sq = 0.0
        self.n = 0

    def update(self, features) -> None:
        """Adds array-like [..., c] features (every vector along the last axis is one feature)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] == 0:
            raise ValueError(f"features must have a non-empty last (channel) axis, got shape {x.shape}")
        x = x.reshape(-1, x.shape[-1])
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain a non-finite value (NaN or inf): cannot estimate gamma")
        if self.total is None:
            self.total = np.zeros(x.shape[1])
        elif self.total.shape[0] != x.shape[1]:
            raise ValueError(f"feature size changed from {self.total.shape[0]} to {x.shape[1]}")
        self.total += x.sum(0)
        self.sq += float((x * x).sum())
        self.n += x.shape[0]

    def mean_inner_product(self) -> float:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors to estimate gamma, got {self.n}")
        return (float(self.total @ self.total) - self.sq) / (self.n * (self.n - 1.0))

    def gamma(self) -> float:
        mean = self.mean_inner_product()
        if not mean > 0:
            raise ValueError(f"mean inner product between features is {mean!r} <= 0; gamma = 1/mean "
                             "needs positively correlated features (e.g. post-ReLU activations)")
        return 1.0 / mean


def estimate_gamma(features) -> float:
    """gamma = 1 / mean <x, y> over pairs of distinct feature vectors (§3.3.2).

    `features` is array-like [..., c] (e.g. a batch of backbone feature maps [B, h, w, c]).
    """
    acc = PairMeanAccumulator()
    acc.update(features)
    return acc.gamma()


__all__ = ["rbf_coefficients", "estimate_gamma", "PairMeanAccumulator"]
