"""Kernel pooling (seed 000, ch.3, Algorithm 1): the pooled compact feature map of a Taylor kernel.

For a feature vector x in R^c (one spatial location of a CNN feature map) Algorithm 1 builds

    phi(x) = [alpha_0, alpha_1 x, alpha_2 TS_2(x), ..., alpha_p TS_p(x)]          (eq 3.7, 3.9)

so that phi(x)^T phi(y) ~= sum_i alpha_i^2 (x^T y)^i = K_Taylor(x, y) (eq 3.1, 3.6); with the RBF
coefficients of eq 3.11 this approximates the Gaussian RBF kernel of L2-normalised features up to
order p. The pooled feature is the average of phi over all locations (Table 3.1), followed by the
signed square root and L2 normalisation of §3.3.1.

The maths lives in `finegrain_tf.ops`: `tensor_sketch` (count sketches, the FFT chain and its
hand-written gradient), `taylor_kernel` (eq 3.11 coefficients, gamma of §3.3.2), `signed_sqrt`.
This module holds the Keras layer: arguments, weights (hash tables drawn once from `seed` and
stored as non-trainable weights, so `.keras` files and SavedModels carry them; gamma; alpha) and
the concatenation of the orders. Orders that share a sketch dimension share the running product
of Algorithm 1 (TS_k reuses the sketches C_1..C_{k-1} of TS_{k-1}); orders with different
dimensions get their own independent sketches (a product of FFTs needs one length).

Cost: see benchmarks/README.md (fraction of ResNet-50 forward+backward at 448, measured by
benchmarks/bench_kernel_pooling.py).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.layers._pooling_inputs import (channel_input_spec, check_input_shape,
                                                 constant_initializer, flatten_locations)
from finegrain_tf.ops.signed_sqrt import signed_sqrt_l2
from finegrain_tf.ops.taylor_kernel import PairMeanAccumulator, rbf_coefficients
from finegrain_tf.ops.tensor_sketch import draw_count_sketch_hashes, pooled_tensor_sketches

COEFFICIENT_MODES = ("learned", "rbf")
DEFAULT_GAMMA = 1.0  # used until `adapt` / `set_gamma` when gamma=None


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
        if gamma is not None and not (isinstance(gamma, (int, float, np.floating, np.integer))
                                      and not isinstance(gamma, bool) and math.isfinite(gamma)
                                      and gamma > 0):
            raise ValueError(f"gamma must be None or a finite number > 0, got {gamma!r}")
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
        self._gamma_warned = False
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
        c = check_input_shape(self, input_shape)
        self.input_dim = c
        drawn = draw_count_sketch_hashes(self.seed, c, self._group_dims,
                                         [max(o) for o in self._group_orders])
        self._hash_vars, self._sign_vars = [], []
        for d, (h, s) in zip(self._group_dims, drawn):
            self._hash_vars.append(self.add_weight(
                name=f"hash_d{d}", shape=h.shape, dtype="int32", trainable=False,
                initializer=constant_initializer(h), autocast=False))
            self._sign_vars.append(self.add_weight(
                name=f"sign_d{d}", shape=s.shape, dtype="float32", trainable=False,
                initializer=constant_initializer(s), autocast=False))
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
                                         trainable=True, initializer=constant_initializer(init),
                                         autocast=False)
        else:
            self.alpha = None
        self.input_spec = channel_input_spec(c)

    @property
    def output_dim(self) -> int:
        if not self.built:
            raise ValueError("output_dim is known once the layer is built")
        return 1 + self.input_dim + sum(self._dims_list)

    def compute_output_shape(self, input_shape):
        c = check_input_shape(self, input_shape)
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
        if isinstance(gamma, bool) or not (isinstance(gamma, (int, float, np.floating, np.integer))
                                           and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
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
        acc = PairMeanAccumulator()
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

    def _warn_if_training_without_gamma(self) -> None:
        """Warns once when RBF-derived coefficients are trained with the placeholder gamma.

        Runs at trace time; the gamma weight is read outside the graph (`tf.init_scope`), so a
        value restored from a checkpoint or set by `adapt` counts as known.
        """
        if self._gamma_warned or self.coefficients not in COEFFICIENT_MODES:
            return
        with tf.init_scope():
            known = float(keras.ops.convert_to_numpy(self.gamma_weight)) > 0
        if not known:
            self._gamma_warned = True
            logging.warning(
                "%s: training with coefficients=%r but gamma was never estimated, so the RBF "
                "coefficients use the placeholder gamma=%s. Call layer.adapt(backbone_feature_maps) "
                "(gamma = 1 / mean <x, y>, seed 000 §3.3.2) before fit, or pass gamma=.",
                self.name, self.coefficients, DEFAULT_GAMMA)

    # -- forward ------------------------------------------------------------------------------------
    def call(self, inputs, training=None):
        if training:
            self._warn_if_training_without_gamma()
        x = flatten_locations(inputs)  # [B, L, C] float32
        alpha = self._alphas()
        batch = tf.shape(x)[0]
        parts = [tf.fill([batch, 1], alpha[0]), alpha[1] * tf.reduce_mean(x, 1)]
        if self.order >= 2:
            pooled = pooled_tensor_sketches(x, self._hash_vars, self._sign_vars, self._group_dims,
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


__all__ = ["KernelPooling"]
