"""Bilinear pooling baselines of seed 000 Table 3.1: full bilinear and compact bilinear pooling.

* `BilinearPooling` (Lin et al. [110]): mean_l x_l x_l^T, flattened to [B, C^2].
* `CompactBilinearPooling` (Gao et al. [49]): the order-2 tensor sketch of `finegrain_tf.ops`, i.e.
  kernel pooling with p = 2 and only the second-order term.

Both end with the signed square root and L2 normalisation of §3.3.1 by default.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf.layers._pooling_inputs import (channel_input_spec, check_input_shape,
                                                 constant_initializer, flatten_locations)
from finegrain_tf.ops.signed_sqrt import signed_sqrt_l2
from finegrain_tf.ops.tensor_sketch import draw_count_sketch_hashes, pooled_tensor_sketches


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
        c = check_input_shape(self, input_shape)
        self.input_dim = c
        ((h, s),) = draw_count_sketch_hashes(self.seed, c, [self.dim], [2])
        self.hash = self.add_weight(name="hash", shape=h.shape, dtype="int32", trainable=False,
                                    initializer=constant_initializer(h), autocast=False)
        self.sign = self.add_weight(name="sign", shape=s.shape, dtype="float32", trainable=False,
                                    initializer=constant_initializer(s), autocast=False)
        self.input_spec = channel_input_spec(c)

    def compute_output_shape(self, input_shape):
        check_input_shape(self, input_shape)
        return (input_shape[0], self.dim)

    def call(self, inputs):
        x = flatten_locations(inputs)
        (y,) = pooled_tensor_sketches(x, [self.hash], [self.sign], [self.dim], [[2]])
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
        self.input_dim = check_input_shape(self, input_shape)
        self.input_spec = channel_input_spec(self.input_dim)

    def compute_output_shape(self, input_shape):
        c = check_input_shape(self, input_shape)
        return (input_shape[0], c * c)

    def call(self, inputs):
        x = flatten_locations(inputs)
        c = x.shape[-1]
        outer = tf.matmul(x, x, transpose_a=True) / tf.cast(tf.shape(x)[1], tf.float32)  # [B, C, C]
        y = tf.reshape(outer, [-1, c * c])
        if self.normalize:
            y = signed_sqrt_l2(y)
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "normalize": self.normalize}


__all__ = ["CompactBilinearPooling", "BilinearPooling"]
