"""Signed square root + L2 normalisation of pooled features (seed 000 §3.3.1)."""

from __future__ import annotations

import math

import tensorflow as tf

_SQRT_EPS = 1e-12


def signed_sqrt_l2(y):
    """y <- sign(y) sqrt(|y|), y <- y / ||y|| (§3.3.1), float32, along the last axis.

    Computed as l2(ssqrt(l2(y))), which equals the above exactly because ssqrt(c y) = sqrt(c) ssqrt(y)
    for c > 0, but makes the square root's smoothing scale-free: ssqrt(u) = sign(u) (sqrt(|u| + eps)
    - sqrt(eps)) with eps = 1e-12 on the unit-norm u is continuous, zero at 0 and has a bounded
    gradient (the exact one is infinite at 0), whatever the magnitude of the pooled features.
    """
    y = tf.math.l2_normalize(tf.cast(y, tf.float32), axis=-1, epsilon=1e-30)
    y = tf.sign(y) * (tf.sqrt(tf.abs(y) + _SQRT_EPS) - math.sqrt(_SQRT_EPS))
    return tf.math.l2_normalize(y, axis=-1, epsilon=1e-30)


__all__ = ["signed_sqrt_l2"]
