"""L2 normalisation of embeddings (seed 000 §2.3.1: f(x) <- f(x) / sqrt(f(x)^T f(x)))."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="finegrain_tf")
class L2Normalize(keras.layers.Layer):
    """x / max(||x||_2, sqrt(epsilon)) along `axis`, computed in float32, returned in compute dtype."""

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

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
