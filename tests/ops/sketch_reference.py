"""Naive float64 references (explicit loops) for count sketches and tensor sketches (eq 3.8, 3.9)."""

import numpy as np


def ref_count_sketch(x, h, s, d):
    """eq 3.8: c_j = sum_{i: h(i) = j} s(i) x_i."""
    out = np.zeros(d)
    for i in range(len(x)):
        out[h[i]] += s[i] * x[i]
    return out


def ref_circular_convolution(a, b):
    d = len(a)
    out = np.zeros(d)
    for n in range(d):
        for m in range(d):
            out[n] += a[m] * b[(n - m) % d]
    return out


def ref_tensor_sketch(x, h, s, d):
    """TS_k(x) = C_1(x) * C_2(x) * ... * C_k(x) (circular convolutions, eq 3.9)."""
    out = ref_count_sketch(x, h[0], s[0], d)
    for t in range(1, len(h)):
        out = ref_circular_convolution(out, ref_count_sketch(x, h[t], s[t], d))
    return out


def ref_ssqrt_l2(y):
    y = np.sign(y) * np.sqrt(np.abs(y))
    return y / np.sqrt(np.sum(y * y, -1, keepdims=True))
