import numpy as np
import pytest
import keras
import tensorflow as tf

from finegrain_tf.layers.normalization import L2Normalize


def test_values_and_zero_vector():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], np.float32)
    out = L2Normalize()(x).numpy()
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], atol=1e-6)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 3, 5))
    np.testing.assert_allclose(L2Normalize(axis=1)(y.astype(np.float32)).numpy(),
                               y / np.linalg.norm(y, axis=1, keepdims=True), rtol=1e-5)


def test_validation_and_config():
    with pytest.raises(ValueError, match="'x'"):
        L2Normalize(axis="x")
    with pytest.raises(ValueError, match="-1"):
        L2Normalize(epsilon=-1.0)
    layer = L2Normalize(axis=1, epsilon=1e-6, name="emb")
    again = L2Normalize.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_gradient_finite_at_zero():
    x = tf.Variable(np.zeros((2, 3), np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(L2Normalize()(x))
    assert np.all(np.isfinite(tape.gradient(y, x).numpy()))


def test_mixed_precision():
    layer = L2Normalize(dtype="mixed_float16")
    out = layer(np.array([[3.0, 4.0]], np.float16))
    assert out.dtype == tf.float16
    np.testing.assert_allclose(out.numpy().astype(np.float32), [[0.6, 0.8]], atol=1e-3)


def test_keras_and_savedmodel_round_trip(tmp_path):
    inp = keras.Input((6,))
    model = keras.Model(inp, L2Normalize(name="embedding")(keras.layers.Dense(4)(inp)))
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    want = model.predict(x, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), want, atol=1e-6)
    export = str(tmp_path / "sm")
    model.export(export, verbose=False)
    loaded = tf.saved_model.load(export)
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), want, atol=1e-6)
