"""Kernel pooling (seed 000, ch.3): compact explicit feature maps of Taylor series kernels.

For a feature vector x in R^c (one spatial location of a CNN feature map) Algorithm 1 builds

    phi(x) = [alpha_0, alpha_1 x, alpha_2 TS_2(x), ..., alpha_p TS_p(x)]          (eq 3.7, 3.9)
    TS_k(x) = FFT^-1( FFT(C_1(x)) o ... o FFT(C_k(x)) )                             (eq 3.9)
    C_t(x)_j = sum_{i: h_t(i) = j} s_t(i) x_i                                        (eq 3.8)

with independent hash functions h_t: {1..c} -> {1..d}, s_t: {1..c} -> {+1, -1}, so that

    phi(x)^T phi(y) ~= sum_i alpha_i^2 (x^T y)^i = K_Taylor(x, y)                   (eq 3.1, 3.6)

and, with alpha_i^2 = exp(-2 gamma) (2 gamma)^i / i!, K_Taylor approximates the Gaussian RBF kernel
of L2-normalised features up to order p (eq 3.11). The pooled feature is the average of phi over all
locations (Table 3.1), followed by the signed square root and L2 normalisation of §3.3.1.

Implementation notes (what makes this fast and servable):
  * Count sketches are sparse: all the sketches of all orders are fused into one
    `tf.math.unsorted_segment_sum` (a stock op that also compiles with XLA); a dense [c, d] ±1
    matrix would cost 2 c d flops per location instead of c.
  * FFTs are real (`rfft`/`irfft`), batched over all locations and sketches at once, in
    float32/complex64 whatever the Keras dtype policy.
  * The inverse FFT is linear, so the average over locations is taken in the frequency domain and
    only one `irfft` per image and order is needed (exactly equal to averaging TS_k over locations).
  * Hashes are drawn once from `seed` with numpy's stable legacy `RandomState` stream and stored as
    non-trainable weights, so `.keras` files and SavedModels carry them.
  * The FFT chain has a hand-written gradient (`_pooled_chain`), ~2x faster than TF's generic
    RFFT/IRFFT gradients; everything compiles with XLA (`jit_compile=True`).

Measured (benchmarks/bench_kernel_pooling.py, shared 2-core CPU, B = 2, CPU-time minimum of 5):
d = 4096, p = 4, C = 2048 forward+backward is 2.7-2.9 % of ResNet-50 forward+backward at 448 on
a 14x14 map (2.0 % with the pooling step XLA-compiled), 11 % on 28x28; a dense count sketch is
~17x slower than the segment sum; compact bilinear pooling of the same output size costs 1.4-1.7x.

Orders that share a sketch dimension share the running product P of Algorithm 1 (TS_k reuses the
sketches C_1..C_{k-1} of TS_{k-1}); orders with different dimensions get their own independent
sketches (a product of FFTs needs one length).
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

COEFFICIENT_MODES = ("learned", "rbf")
DEFAULT_GAMMA = 1.0  # used until `adapt` / `set_gamma` when gamma=None
_SQRT_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# Pure helpers (shared by the layers, the approximation-error tool and the tests)


def rbf_coefficients(gamma: float, order: int, normalized: bool = False) -> np.ndarray:
    """alpha_i = sqrt(exp(-2 gamma) (2 gamma)^i / i!), i = 0..order (eq 3.11, L2-normalised inputs).

    normalized=True replaces the global factor exp(-2 gamma) = 1 / sum_{i>=0} (2 gamma)^i / i! by its
    truncation 1 / sum_{i<=order} (2 gamma)^i / i! (so sum_i alpha_i^2 = 1). Only the overall scale
    changes, which the signed square root + L2 normalisation of §3.3.1 removes exactly, and the values
    stay representable for large gamma (exp(-2 gamma) underflows float32 beyond gamma ~ 44, which
    happens with the small raw features of a randomly initialised backbone).
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    i = np.arange(order + 1, dtype=np.float64)
    log_terms = i * math.log(2.0 * gamma) - np.array([math.lgamma(k + 1) for k in i])
    if normalized:
        top = log_terms.max()
        log_sq = log_terms - (top + math.log(np.sum(np.exp(log_terms - top))))
    else:
        log_sq = -2.0 * gamma + log_terms
    return np.exp(0.5 * log_sq)


def estimate_gamma(features) -> float:
    """gamma = 1 / mean <x, y> over pairs of distinct feature vectors (§3.3.2).

    `features` is array-like [..., c] (e.g. a batch of backbone feature maps [B, h, w, c]); every
    vector along the last axis is one feature. The mean over all N (N - 1) ordered pairs i != j is
    computed exactly in O(N c) as (||sum_i x_i||^2 - sum_i ||x_i||^2) / (N (N - 1)).
    """
    acc = _PairMeanAccumulator()
    acc.update(features)
    return acc.gamma()


class _PairMeanAccumulator:
    """Streams sum_i x_i and sum_i ||x_i||^2 (float64) for `estimate_gamma` over many batches."""

    def __init__(self):
        self.total = None
        self.sq = 0.0
        self.n = 0

    def update(self, features) -> None:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] == 0:
            raise ValueError(f"features must have a non-empty last (channel) axis, got shape {x.shape}")
        x = x.reshape(-1, x.shape[-1])
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


def draw_count_sketch_hashes(seed: int, input_dim: int, dims: Sequence[int],
                             num_sketches: Sequence[int]):
    """Independent hashes (h_t, s_t) per sketch (Algorithm 1, line 3), deterministic in `seed`.

    For each group g (sketch dimension dims[g] with num_sketches[g] sketches) returns
    h: int32 [m_g, input_dim] uniform in [0, dims[g]) and s: float32 [m_g, input_dim] uniform in {+1, -1}.
    Uses `np.random.RandomState`, whose stream numpy keeps stable across versions.
    """
    rs = np.random.RandomState(seed)
    out = []
    for dim, m in zip(dims, num_sketches):
        hs, ss = [], []
        for _ in range(m):
            hs.append(rs.randint(0, dim, size=input_dim))
            ss.append(rs.randint(0, 2, size=input_dim) * 2 - 1)
        out.append((np.asarray(hs, np.int32).reshape(m, input_dim),
                    np.asarray(ss, np.float32).reshape(m, input_dim)))
    return out


def _fused_sketch_matrix(hashes, signs, dims) -> tf.sparse.SparseTensor:
    """One sparse [sum_g m_g d_g, c] matrix holding every count sketch of every group as rows."""
    idx_rows, idx_cols, values = [], [], []
    offset = 0
    for h, s, dim in zip(hashes, signs, dims):
        h = tf.convert_to_tensor(h, tf.int32)
        m, c = tf.shape(h)[0], tf.shape(h)[1]
        rows = h + offset + tf.range(m)[:, None] * dim
        cols = tf.broadcast_to(tf.range(c)[None, :], tf.shape(h))
        idx_rows.append(tf.reshape(rows, [-1]))
        idx_cols.append(tf.reshape(cols, [-1]))
        values.append(tf.reshape(tf.cast(s, tf.float32), [-1]))
        offset = offset + h.shape[0] * dim
    indices = tf.cast(tf.stack([tf.concat(idx_rows, 0), tf.concat(idx_cols, 0)], 1), tf.int64)
    c = hashes[0].shape[1]
    return tf.sparse.SparseTensor(indices, tf.concat(values, 0), [offset, c])


def _sketch_rows(x, hashes, signs, dims, method: str):
    """All count sketches of x [N, c] as rows: float32 [sum_g m_g d_g, N] (no transposed copy)."""
    shapes = [(int(h.shape[0]), int(d)) for h, d in zip(hashes, dims)]
    total = sum(m * d for m, d in shapes)
    if method == "segment_sum":
        # Rows (t, c) of the signed data s_t(c) x_c^T go to segment offset_t + h_t(c). One broadcast
        # multiply builds all of them (no gather), one segment sum computes every sketch.
        xt = tf.transpose(x)  # [c, N]
        segs, data = [], []
        offset = 0
        for h, s, (m, d) in zip(hashes, signs, shapes):
            h = tf.convert_to_tensor(h, tf.int32)
            segs.append(tf.reshape(h + offset + tf.range(m)[:, None] * d, [-1]))
            signed = xt[None] * tf.cast(s, tf.float32)[:, :, None]  # [m, c, N]
            data.append(tf.reshape(signed, [-1, tf.shape(xt)[1]]))
            offset += m * d
        data = data[0] if len(data) == 1 else tf.concat(data, 0)
        segs = segs[0] if len(segs) == 1 else tf.concat(segs, 0)
        return tf.math.unsorted_segment_sum(data, segs, total)
    if method == "sparse":
        return tf.sparse.sparse_dense_matmul(_fused_sketch_matrix(hashes, signs, dims), x,
                                             adjoint_b=True)
    if method == "dense":
        dense = tf.sparse.to_dense(tf.sparse.reorder(_fused_sketch_matrix(hashes, signs, dims)))
        return tf.matmul(dense, x, transpose_b=True)
    raise ValueError(f"unknown count sketch method {method!r}")


def _count_sketch_major(x, hashes, signs, dims, method: str):
    """Per group [m_g, N, d_g]: sketch-major, so that slicing one sketch is contiguous."""
    rows = _sketch_rows(tf.cast(x, tf.float32), hashes, signs, dims, method)
    out, start = [], 0
    for h, d in zip(hashes, dims):
        m, d = int(h.shape[0]), int(d)
        block = tf.reshape(rows[start:start + m * d], [m, d, -1])
        out.append(tf.transpose(block, [0, 2, 1]))
        start += m * d
    return out


def count_sketch(x, hashes, signs, dims, method: str = "segment_sum"):
    """Count sketches C_t(x) (eq 3.8) of x [N, c] for every group: a list of [N, m_g, d_g] float32.

    method: "segment_sum" (one fused `tf.math.unsorted_segment_sum` over all sketches; the default
    everywhere: as fast as a sparse matmul on CPU and, unlike it, compiles with XLA, which Keras
    enables by default in `fit` on GPUs), "sparse" (one fused `tf.sparse.sparse_dense_matmul`) or
    "dense" (a dense ±1 matrix; benchmark baseline only).
    """
    return [tf.transpose(sk, [1, 0, 2])
            for sk in _count_sketch_major(x, hashes, signs, dims, method)]


def _pooled_chain(sk, batch, locations, dim: int, wanted: Sequence[int]):
    """mean_l irfft(prod_{t<=k} rfft(sk_t)) for k in `wanted`, with a hand-written gradient.

    sk: [m, N, d] sketches (N = batch * locations). Returns [n, B, d] for the n wanted orders.
    Backward pass, for the incoming gradient g [n, B, d] (TF's conjugate convention):
      G_k = rfft(g_k) / L: the adjoint of irfft (rfft(g) * [1, 2, .., 2, 1] / d), of the mean over
        the L locations and of rfft (d * irfft(. * [1, 1/2, .., 1/2, 1])) combined, whose
        frequency weights cancel exactly;
      R_m = G_m, R_t = [t wanted] G_t + conj(F_{t+1}) R_{t+1};  dF_t = conj(P_{t-1}) R_t with the
        prefix products P_t = F_1 ... F_t (no division, so zeros in a spectrum are harmless);
      d sk_t = irfft(dF_t).
    It avoids the broadcast of the pooled gradient to every location and the extra full-size terms
    of TF's generic RFFT gradient.
    """
    m = int(sk.shape[0])
    freqs = dim // 2 + 1
    wanted = sorted(wanted)

    @tf.custom_gradient
    def chain(sk):
        spectra = tf.reshape(tf.signal.rfft(sk), [m, batch, locations, freqs])  # [m, B, L, F]
        f = tf.unstack(spectra, axis=0)
        prefix = [f[0]]
        for t in range(1, m):
            prefix.append(prefix[-1] * f[t])  # P <- P o FFT(C_{t+1}(x)) (Algorithm 1, line 5)
        pooled = tf.stack([tf.reduce_mean(prefix[k - 1], 1) for k in wanted], 0)  # [n, B, F]
        out = tf.signal.irfft(pooled, fft_length=[dim])

        def grad(g):
            big = tf.signal.rfft(g) / tf.cast(locations, tf.complex64)  # [n, B, F]
            per_order = dict(zip(wanted, tf.unstack(big[:, :, None, :], axis=0)))
            d_spectra = [None] * m
            r = None
            for t in range(m, 0, -1):  # t = m .. 1 (1-based orders / sketches)
                if t in per_order:
                    r = per_order[t] if r is None else r + per_order[t]
                if r is None:  # no wanted order >= t (cannot happen for t <= max(wanted))
                    d_spectra[t - 1] = tf.zeros_like(f[0])
                    continue
                if t > 1:
                    d_spectra[t - 1] = r * tf.math.conj(prefix[t - 2])
                    r = r * tf.math.conj(f[t - 1])
                else:
                    d_spectra[0] = tf.broadcast_to(r, tf.shape(f[0]))
            d = tf.reshape(tf.stack(d_spectra, 0), [m, -1, freqs])
            return tf.signal.irfft(d, fft_length=[dim])

        return out, grad

    return chain(sk)


def _pooled_chain_autodiff(sk, batch, locations, dim: int, wanted: Sequence[int]):
    """Same as `_pooled_chain` with TF's generic gradients (reference for tests and benchmarks)."""
    m = int(sk.shape[0])
    spectra = tf.reshape(tf.signal.rfft(sk), [m, batch, locations, dim // 2 + 1])
    prefix = [spectra[0]]
    for t in range(1, m):
        prefix.append(prefix[-1] * spectra[t])
    pooled = tf.stack([tf.reduce_mean(prefix[k - 1], 1) for k in sorted(wanted)], 0)
    return tf.signal.irfft(pooled, fft_length=[dim])


def pooled_tensor_sketches(x, hashes, signs, dims, orders, method: str = "segment_sum",
                           custom_gradient: bool = True):
    """Location-averaged tensor sketches (eq 3.9) of x [B, L, c] for the requested orders.

    `orders[g]` lists the orders k >= 2 computed with group g (dimension dims[g]); group g must hold
    at least max(orders[g]) sketches. Returns, group by group and in increasing order within a
    group, a list of float32 [B, d_g] tensors mean_l TS_k(x_l) = irfft(mean_l prod_{t<=k}
    rfft(C_t(x_l))) (the IFFT is linear, so the average over locations is taken in the frequency
    domain: one inverse FFT per image and order instead of one per location).
    """
    x = tf.cast(x, tf.float32)
    c = x.shape[-1]
    batch, locations = tf.shape(x)[0], tf.shape(x)[1]
    sketches = _count_sketch_major(tf.reshape(x, [-1, c]), hashes, signs, dims, method)
    chain = _pooled_chain if custom_gradient else _pooled_chain_autodiff
    results = []
    for sk, dim, group_orders in zip(sketches, dims, orders):
        sk = sk[:max(group_orders)]
        results.extend(tf.unstack(chain(sk, batch, locations, int(dim), group_orders), axis=0))
    return results


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


def _flatten_locations(inputs):
    """[B, H, W, c] or [B, L, c] or [B, c] -> float32 [B, L, c]."""
    x = tf.cast(inputs, tf.float32)
    c = x.shape[-1]
    if x.shape.rank == 2:
        return x[:, None, :]
    return tf.reshape(x, [tf.shape(x)[0], -1, c])


def _check_input_shape(layer, input_shape):
    if len(input_shape) not in (2, 3, 4):
        raise ValueError(f"{layer.__class__.__name__} expects [B, H, W, C], [B, L, C] or [B, C] "
                         f"inputs, got shape {tuple(input_shape)}")
    if input_shape[-1] is None:
        raise ValueError(f"{layer.__class__.__name__} needs a known channel size, got {tuple(input_shape)}")
    return int(input_shape[-1])


def _hash_initializer(value):
    def init(shape, dtype=None):
        return np.asarray(value).reshape(shape)
    return init


# --------------------------------------------------------------------------------------------------
# Layers


@keras.saving.register_keras_serializable(package="finegrain_tf")
class KernelPooling(keras.layers.Layer):
    """Kernel pooling (seed 000 Algorithm 1): pooled compact feature map of a Taylor series kernel.

    Input [B, H, W, C] (or [B, L, C], or [B, C] for a single location); output
    [B, 1 + C + sum_i d_i]: the location average of
    phi(x) = [alpha_0, alpha_1 x, alpha_2 TS_2(x), ..., alpha_p TS_p(x)] (eq 3.7, 3.9), then (by default)
    signed square root and L2 normalisation (§3.3.1). phi(x)^T phi(y) is an unbiased estimate of
    sum_i alpha_i^2 (x^T y)^i (eq 3.6, 3.10).

    Args:
      order: p >= 1, the highest order of the Taylor series kernel.
      dims: sketch dimension d_i of every order i >= 2: one int, or a list of p - 1 ints.
      coefficients: "learned" (trainable alpha_i, initialised to the RBF values of eq 3.11), "rbf"
        (fixed to eq 3.11 with the layer's gamma) or an explicit list [alpha_0, ..., alpha_p] (fixed).
        With normalize=True the RBF values are rescaled by a common factor that the normalisation
        removes (`rbf_coefficients(normalized=True)`), so large gammas do not underflow.
      gamma: RBF gamma for the "learned"/"rbf" coefficients. None: `DEFAULT_GAMMA` until `adapt()`
        (gamma = 1 / mean <x, y>, §3.3.2) or `set_gamma()` is called; the value lives in the
        non-trainable weight "gamma" and is saved with the layer.
      normalize: apply signed square root and L2 normalisation after pooling.
      seed: seed of the hash functions h_t, s_t (drawn once, stored as non-trainable weights).
    """

    def __init__(self, order: int = 4, dims=4096, coefficients="learned", gamma=None,
                 normalize: bool = True, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        order = int(order)
        if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool):
            dims_list = [int(dims)] * (order - 1)
            dims_config = int(dims)
        elif isinstance(dims, (list, tuple)):
            if len(dims) != order - 1:
                raise ValueError(f"dims must be one int or a list of order - 1 = {order - 1} ints, "
                                 f"got {dims!r}")
            dims_list = [int(d) for d in dims]
            dims_config = list(dims_list)
        else:
            raise ValueError(f"dims must be an int or a list of ints, got {dims!r}")
        if any(d < 1 or isinstance(d, bool) for d in dims_list):
            raise ValueError(f"dims must be >= 1, got {dims!r}")
        if isinstance(coefficients, str):
            if coefficients not in COEFFICIENT_MODES:
                raise ValueError(f"coefficients must be one of {list(COEFFICIENT_MODES)} or a list of "
                                 f"order + 1 floats, got {coefficients!r}")
            coeff_config = coefficients
        elif isinstance(coefficients, (list, tuple, np.ndarray)):
            if len(coefficients) != order + 1:
                raise ValueError(f"coefficients must have order + 1 = {order + 1} values, got "
                                 f"{coefficients!r}")
            coeff_config = [float(a) for a in coefficients]
        else:
            raise ValueError(f"coefficients must be 'learned', 'rbf' or a list, got {coefficients!r}")
        if gamma is not None and not (isinstance(gamma, (int, float)) and gamma > 0):
            raise ValueError(f"gamma must be None or > 0, got {gamma!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.order = order
        self.dims = dims_config
        self.coefficients = coeff_config
        self.gamma = None if gamma is None else float(gamma)
        self.normalize = normalize
        self.seed = int(seed)
        self._dims_list = dims_list
        # Orders sharing a dimension share the sketches (running product of Algorithm 1).
        self._group_dims: list[int] = []
        self._group_orders: list[list[int]] = []
        for k, d in zip(range(2, order + 1), dims_list):
            if d not in self._group_dims:
                self._group_dims.append(d)
                self._group_orders.append([])
            self._group_orders[self._group_dims.index(d)].append(k)

    # -- weights ------------------------------------------------------------------------------------
    def build(self, input_shape):
        c = _check_input_shape(self, input_shape)
        self.input_dim = c
        drawn = draw_count_sketch_hashes(self.seed, c, self._group_dims,
                                         [max(o) for o in self._group_orders])
        self._hash_vars, self._sign_vars = [], []
        for d, (h, s) in zip(self._group_dims, drawn):
            self._hash_vars.append(self.add_weight(
                name=f"hash_d{d}", shape=h.shape, dtype="int32", trainable=False,
                initializer=_hash_initializer(h), autocast=False))
            self._sign_vars.append(self.add_weight(
                name=f"sign_d{d}", shape=s.shape, dtype="float32", trainable=False,
                initializer=_hash_initializer(s), autocast=False))
        gamma0 = self.gamma if self.gamma is not None else 0.0
        self.gamma_weight = self.add_weight(
            name="gamma", shape=(), dtype="float32", trainable=False,
            initializer=keras.initializers.Constant(gamma0), autocast=False)
        if self.coefficients == "learned":
            if self.gamma is None:
                logging.info("%s: gamma=None, coefficients start from gamma=%s until adapt()/set_gamma()",
                             self.name, DEFAULT_GAMMA)
            init = rbf_coefficients(self.gamma or DEFAULT_GAMMA, self.order,
                                    normalized=self.normalize).astype(np.float32)
            self.alpha = self.add_weight(name="alpha", shape=(self.order + 1,), dtype="float32",
                                         trainable=True, initializer=_hash_initializer(init),
                                         autocast=False)
        else:
            self.alpha = None

    @property
    def output_dim(self) -> int:
        if not self.built:
            raise ValueError("output_dim is known once the layer is built")
        return 1 + self.input_dim + sum(self._dims_list)

    def compute_output_shape(self, input_shape):
        c = _check_input_shape(self, input_shape)
        return (input_shape[0], 1 + c + sum(self._dims_list))

    # -- gamma --------------------------------------------------------------------------------------
    @property
    def has_gamma(self) -> bool:
        """True once gamma is known: given to the constructor, or set by `adapt` / `set_gamma`."""
        return self.built and float(keras.ops.convert_to_numpy(self.gamma_weight)) > 0

    def effective_gamma(self) -> float:
        g = float(keras.ops.convert_to_numpy(self.gamma_weight))
        return g if g > 0 else DEFAULT_GAMMA

    def set_gamma(self, gamma: float) -> None:
        """Stores gamma; with "learned" coefficients re-initialises alpha to eq 3.11 for it."""
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        if not self.built:
            raise ValueError("build the layer (call it once) before set_gamma/adapt")
        self.gamma_weight.assign(float(gamma))
        if self.alpha is not None:
            self.alpha.assign(rbf_coefficients(float(gamma), self.order,
                                               normalized=self.normalize).astype(np.float32))

    def adapt(self, data, steps: int | None = None) -> float:
        """Estimates gamma = 1 / mean <x, y> (§3.3.2) from feature maps and calls `set_gamma`.

        `data`: an array [..., C], or an iterable / tf.data.Dataset of such batches (or of
        (features, ...) tuples); `steps` limits the number of batches. Returns gamma.
        """
        acc = _PairMeanAccumulator()
        if isinstance(data, (np.ndarray, tf.Tensor)) or keras.ops.is_tensor(data):
            acc.update(keras.ops.convert_to_numpy(data))
        else:
            for i, batch in enumerate(data):
                if steps is not None and i >= steps:
                    break
                if isinstance(batch, (tuple, list)):
                    batch = batch[0]
                acc.update(keras.ops.convert_to_numpy(batch))
        if not self.built:
            self.build((None, acc.total.shape[0]))
        gamma = acc.gamma()
        self.set_gamma(gamma)
        return gamma

    def _alphas(self):
        if self.alpha is not None:
            return tf.convert_to_tensor(self.alpha)
        if self.coefficients == "rbf":
            g = tf.convert_to_tensor(self.gamma_weight)
            g = tf.where(g > 0, g, DEFAULT_GAMMA)
            i = tf.range(self.order + 1, dtype=tf.float32)
            log_terms = i * tf.math.log(2.0 * g) - tf.math.lgamma(i + 1.0)
            if self.normalize:  # see rbf_coefficients(normalized=True)
                log_sq = log_terms - tf.reduce_logsumexp(log_terms)
            else:
                log_sq = log_terms - 2.0 * g
            return tf.exp(0.5 * log_sq)
        return tf.constant(self.coefficients, tf.float32)

    # -- forward ------------------------------------------------------------------------------------
    def call(self, inputs):
        x = _flatten_locations(inputs)  # [B, L, C] float32
        alpha = self._alphas()
        batch = tf.shape(x)[0]
        parts = [tf.fill([batch, 1], alpha[0]), alpha[1] * tf.reduce_mean(x, 1)]
        if self.order >= 2:
            pooled = pooled_tensor_sketches(
                x, [tf.convert_to_tensor(h) for h in self._hash_vars],
                [tf.convert_to_tensor(s) for s in self._sign_vars], self._group_dims,
                self._group_orders)
            by_order = {}
            for k, ts in zip([k for ks in self._group_orders for k in ks], pooled):
                by_order[k] = ts
            parts += [alpha[k] * by_order[k] for k in range(2, self.order + 1)]
        y = tf.concat(parts, -1)
        if self.normalize:
            y = signed_sqrt_l2(y)
        return tf.cast(y, self.compute_dtype)

    # -- introspection for tests and tools ----------------------------------------------------------
    def sketch_hashes(self) -> dict:
        """{order k >= 2: (h int [k, C], s float [k, C], d_k)}: the sketches C_1..C_k used by TS_k."""
        out = {}
        for hv, sv, d, ks in zip(self._hash_vars, self._sign_vars, self._group_dims,
                                 self._group_orders):
            h, s = keras.ops.convert_to_numpy(hv), keras.ops.convert_to_numpy(sv)
            for k in ks:
                out[k] = (h[:k], s[:k], d)
        return out

    def coefficient_values(self) -> np.ndarray:
        return keras.ops.convert_to_numpy(self._alphas()).astype(np.float64)

    def get_config(self):
        return {**super().get_config(), "order": self.order, "dims": self.dims,
                "coefficients": self.coefficients, "gamma": self.gamma,
                "normalize": self.normalize, "seed": self.seed}


@keras.saving.register_keras_serializable(package="finegrain_tf")
class CompactBilinearPooling(keras.layers.Layer):
    """Compact bilinear pooling (Tensor Sketch, Gao et al. [49] in seed 000; the p = 2 special case).

    Output [B, dim] = location average of TS(x) = FFT^-1(FFT(C_1 x) o FFT(C_2 x)), whose inner
    products estimate (x^T y)^2 without bias; then (by default) signed square root + L2 (§3.3.1).
    """

    def __init__(self, dim: int = 8192, normalize: bool = True, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.dim = int(dim)
        self.normalize = normalize
        self.seed = int(seed)

    def build(self, input_shape):
        c = _check_input_shape(self, input_shape)
        self.input_dim = c
        ((h, s),) = draw_count_sketch_hashes(self.seed, c, [self.dim], [2])
        self.hash = self.add_weight(name="hash", shape=h.shape, dtype="int32", trainable=False,
                                    initializer=_hash_initializer(h), autocast=False)
        self.sign = self.add_weight(name="sign", shape=s.shape, dtype="float32", trainable=False,
                                    initializer=_hash_initializer(s), autocast=False)

    def compute_output_shape(self, input_shape):
        _check_input_shape(self, input_shape)
        return (input_shape[0], self.dim)

    def call(self, inputs):
        x = _flatten_locations(inputs)
        (y,) = pooled_tensor_sketches(x, [tf.convert_to_tensor(self.hash)],
                                      [tf.convert_to_tensor(self.sign)], [self.dim], [[2]])
        if self.normalize:
            y = signed_sqrt_l2(y)
        return tf.cast(y, self.compute_dtype)

    def sketch_hashes(self) -> dict:
        return {2: (keras.ops.convert_to_numpy(self.hash), keras.ops.convert_to_numpy(self.sign),
                    self.dim)}

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "normalize": self.normalize,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="finegrain_tf")
class BilinearPooling(keras.layers.Layer):
    """Full bilinear pooling (Lin et al. [110]; Table 3.1): mean_l x_l x_l^T flattened to [B, C^2],
    then (by default) signed square root + L2 normalisation (§3.3.1)."""

    def __init__(self, normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        self.normalize = normalize

    def build(self, input_shape):
        self.input_dim = _check_input_shape(self, input_shape)

    def compute_output_shape(self, input_shape):
        c = _check_input_shape(self, input_shape)
        return (input_shape[0], c * c)

    def call(self, inputs):
        x = _flatten_locations(inputs)
        c = x.shape[-1]
        outer = tf.matmul(x, x, transpose_a=True) / tf.cast(tf.shape(x)[1], tf.float32)  # [B, C, C]
        y = tf.reshape(outer, [-1, c * c])
        if self.normalize:
            y = signed_sqrt_l2(y)
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "normalize": self.normalize}


def kernel_pooling_layers(model) -> list:
    """The KernelPooling layers of a (possibly nested) Keras model."""
    found = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, KernelPooling):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(kernel_pooling_layers(layer))
    return found


__all__ = ["KernelPooling", "CompactBilinearPooling", "BilinearPooling", "estimate_gamma",
           "rbf_coefficients", "count_sketch", "pooled_tensor_sketches", "draw_count_sketch_hashes",
           "signed_sqrt_l2", "kernel_pooling_layers"]
