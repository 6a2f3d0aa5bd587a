"""Flip-averaged inference (seed 000 §3.3.1): the image and its horizontal mirror share one pass.

`FlipTestAugment` doubles the batch with the mirrored images before the backbone and
`FlipTestAverage` averages the two halves after pooling; both are identities in training.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="finegrain_tf")
class FlipTestAugment(keras.layers.Layer):
    """Inference: [B, H, W, C] -> [2B, H, W, C] = concat(x, horizontal flip of x). Training: identity."""

    def call(self, inputs, training=False):
        if training:
            return inputs
        return tf.concat([inputs, tf.reverse(inputs, axis=[2])], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="finegrain_tf")
class FlipTestAverage(keras.layers.Layer):
    """Inference: [2B, ...] -> [B, ...], the mean of the two halves made by `FlipTestAugment`.
    Training: identity. Averages in float32 and returns the compute dtype."""

    def call(self, inputs, training=False):
        if training:
            return inputs
        x = tf.cast(inputs, tf.float32)
        halves = tf.reshape(x, tf.concat([[2, -1], tf.shape(x)[1:]], 0))
        return tf.cast(tf.reduce_mean(halves, 0), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
