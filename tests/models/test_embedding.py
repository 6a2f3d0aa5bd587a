import numpy as np
import pytest
import keras
import tensorflow as tf

from finegrain_tf.models.embedding import build_embedding_model


@pytest.fixture(scope="module")
def tiny_backbone():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(keras.layers.Rescaling(1 / 255.0)(inp))
    return keras.Model(inp, x)


def test_unit_norm_output_and_layer_name(tiny_backbone):
    model = build_embedding_model(tiny_backbone, embedding_dim=8)
    x = np.random.default_rng(0).uniform(0, 255, size=(3, 16, 16, 3)).astype(np.float32)
    out = model.predict(x, verbose=0)
    assert out.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("embedding").output.shape[-1] == 8


def test_default_dim_named_backbone_and_errors():
    model = build_embedding_model("small_cnn", input_size=32)
    assert model.output_shape == (None, 64)
    with pytest.raises(ValueError, match="input_size"):
        build_embedding_model("small_cnn")
    with pytest.raises(ValueError, match="0"):
        build_embedding_model("small_cnn", embedding_dim=0, input_size=32)
    with pytest.raises(ValueError, match="'sum'"):
        build_embedding_model("small_cnn", input_size=32, pooling="sum")


def test_keras_round_trip_and_mixed_precision(tiny_backbone, tmp_path):
    model = build_embedding_model(tiny_backbone, embedding_dim=6)
    x = np.random.default_rng(1).uniform(0, 255, size=(2, 16, 16, 3)).astype(np.float32)
    path = str(tmp_path / "e.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((16, 16, 3))
        bb = keras.Model(inp, keras.layers.Conv2D(4, 3)(inp))
        mp = build_embedding_model(bb, embedding_dim=6)
        out = mp(x)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, rtol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_batch_norm_option(tiny_backbone):
    model = build_embedding_model(tiny_backbone, embedding_dim=8, batch_norm=True)
    assert isinstance(model.get_layer("projection_bn"), keras.layers.BatchNormalization)
    x = np.random.default_rng(2).uniform(0, 255, size=(4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(model(x, training=True).numpy(), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        build_embedding_model(tiny_backbone, embedding_dim=8).get_layer("projection_bn")
