"""Input handling shared by the pooling layers (kernel, compact bilinear, bilinear)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def flatten_locations(inputs):
    """[B, H, W, c] or [B, L, c] or [B, c] -> float32 [B, L, c]."""
    x = tf.cast(inputs, tf.float32)
    c = x.shape[-1]
    if x.shape.rank == 2:
        return x[:, None, :]
    return tf.reshape(x, [tf.shape(x)[0], -1, c])


def check_input_shape(layer, input_shape) -> int:
    """The channel count c of a [B, H, W, c], [B, L, c] or [B, c] input; ValueError otherwise."""
    if len(input_shape) not in (2, 3, 4):
        raise ValueError(f"{layer.__class__.__name__} expects [B, H, W, C], [B, L, C] or [B, C] "
                         f"inputs, got shape {tuple(input_shape)}")
    if input_shape[-1] is None:
        raise ValueError(f"{layer.__class__.__name__} needs a known channel size, got {tuple(input_shape)}")
    return int(input_shape[-1])


def channel_input_spec(channels: int) -> keras.InputSpec:
    """Input spec fixing the channel count after build, so Keras refuses another count clearly
    (naming the expected and received shapes) instead of failing deep inside a gather."""
    return keras.InputSpec(min_ndim=2, max_ndim=4, axes={-1: int(channels)})


def constant_initializer(value):
    """Initializer returning `value` (the hash tables drawn from the seed at build time)."""
    def init(shape, dtype=None):
        return np.asarray(value).reshape(shape)
    return init
