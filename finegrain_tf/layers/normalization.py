"""L2 normalisation of embeddings (seed 000 §2.3.1: f(x) <- f(x) / sqrt(f(x)^T f(x)))."""

from __future__ import annotations

import keras
import tensorflow as tf


class _ShapePreservingLayer(keras.layers.Layer):
    """Base of the layers below: the output has the input's shape, and `get_config` adds the
    constructor arguments named in `_config_args` (each stored under the same attribute name)."""

    _config_args: tuple[str, ...] = ()

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in self._config_args}}


@keras.saving.register_keras_serializable(package="finegrain_tf")
class L2Normalize(_ShapePreservingLayer):
    """x / max(||x||_2, sqrt(epsilon)) along `axis`, computed in float32, returned in compute dtype."""

    _config_args = ("axis", "epsilon")

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, int):
            raise ValueError(f"axis must be an int, got {axis!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.axis = axis
        self.epsilon = float(epsilon)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        return tf.cast(tf.math.l2_normalize(x, axis=self.axis, epsilon=self.epsilon), self.compute_dtype)


@keras.saving.register_keras_serializable(package="finegrain_tf")
class Rescale(_ShapePreservingLayer):
    """x * scale + offset, a serializable stand-in for the per-family preprocess_input functions."""

    _config_args = ("scale", "offset")

    def __init__(self, scale, offset, **kwargs):
        super().__init__(**kwargs)
        self.scale = [float(s) for s in scale] if isinstance(scale, (list, tuple)) else float(scale)
        self.offset = [float(o) for o in offset] if isinstance(offset, (list, tuple)) else float(offset)

    def call(self, inputs):
        scale = keras.ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=self.compute_dtype)
        return keras.ops.cast(inputs, self.compute_dtype) * scale + offset


@keras.saving.register_keras_serializable(package="finegrain_tf")
class CaffeNormalize(_ShapePreservingLayer):
    """RGB->BGR and ImageNet mean subtraction (keras.applications 'caffe' mode)."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=self.compute_dtype)
        return x - mean
