"""Every layer compiles with jit_compile=True (static shapes, no host round trips: the precondition
of the TPU path) and gives the eager forward values and finite gradients, at toy size."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from finegrain_tf.layers import (AnchorSoftVote, BilinearPooling, CaffeNormalize,  # noqa: E402
                                 CompactBilinearPooling, FlipTestAugment, FlipTestAverage,
                                 KernelPooling, L2Normalize, Rescale)

RNG = np.random.RandomState(0)
MAPS = RNG.uniform(0.1, 1.0, size=(2, 3, 3, 6)).astype(np.float32)
VECTORS = RNG.normal(size=(4, 6)).astype(np.float32)
IMAGES = RNG.uniform(0, 255, size=(2, 4, 4, 3)).astype(np.float32)

LAYERS = {
    "kernel_pooling": (lambda: KernelPooling(order=3, dims=[8, 6], gamma=0.5), MAPS),
    "kernel_pooling_rbf": (lambda: KernelPooling(order=4, dims=8, coefficients="rbf"), MAPS),
    "compact_bilinear": (lambda: CompactBilinearPooling(dim=8), MAPS),
    "bilinear": (lambda: BilinearPooling(), MAPS),
    "anchor_probabilities": (lambda: AnchorSoftVote(3, 2, 5.0), VECTORS),
    "anchor_logits": (lambda: AnchorSoftVote(3, 2, 5.0, output_mode="logits"), VECTORS),
    "anchor_log_probabilities": (lambda: AnchorSoftVote(3, 2, 5.0, output_mode="log_probabilities"),
                                 VECTORS),
    "l2_normalize": (lambda: L2Normalize(), VECTORS),
    "rescale": (lambda: Rescale(scale=[0.5, 1.0, 2.0], offset=[0.0, -1.0, 1.0]), IMAGES),
    "caffe_normalize": (lambda: CaffeNormalize(), IMAGES),
    "flip_augment": (lambda: FlipTestAugment(), IMAGES),
    "flip_average": (lambda: FlipTestAverage(), np.concatenate([VECTORS, VECTORS[::-1]])),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_compiles_with_xla(name):
    make, data = LAYERS[name]
    layer = make()
    x = tf.constant(data)
    eager = layer(x)

    @tf.function(jit_compile=True)
    def step(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = layer(v)
            loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
        return y, tape.gradient(loss, [v] + layer.trainable_variables)

    y, grads = step(x)
    np.testing.assert_allclose(y.numpy(), eager.numpy(), rtol=1e-5, atol=1e-5)
    for g in grads:
        assert g is None or np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))
