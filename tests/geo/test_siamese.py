"""Siamese and double-Siamese towers: shapes, frozen parts, .keras round trip, a few training steps."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.losses import ContrastiveLoss
from finegrain_tf.models import siamese

SIZE = 32


def _pairs(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = {"image_a": rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32"),
         "image_b": rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")}
    return x, np.arange(n) % 2


def _double(mode, **kwargs):
    return siamese.build_double_tower(mode, SIZE, invariant_backbone="small_cnn", variant_backbone="small_cnn",
                                      variant_dim=24, blend_units=(16,), embedding_dim=8, **kwargs)


def test_tower_shares_weights_and_matches_contrastive_layout():
    tower = siamese.build_tower("small_cnn", 8, SIZE, hidden_units=(16,), dropout=0.1)
    assert tower.layers[-1].name == "embedding"
    assert any(isinstance(layer, keras.layers.PReLU) for layer in tower.layers)
    projection = tower.get_layer("projection")
    assert isinstance(projection.kernel_initializer, keras.initializers.HeNormal)
    model = siamese.build_siamese(tower)
    x, _ = _pairs()
    out = model(x).numpy()
    assert out.shape == (8, 2, 8)
    np.testing.assert_allclose(out[:, 0], tower(x["image_a"]).numpy(), atol=1e-5)
    np.testing.assert_allclose(out[:, 1], tower(x["image_b"]).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    # Shared weights: the pair model has exactly the tower's variables.
    assert len(model.weights) == len(tower.weights)


@pytest.mark.parametrize("mode,dim", [("variant", 24), ("concat", 24 + 256), ("joint", 24 + 256), ("blend", 8)])
def test_double_tower_modes(mode, dim, tmp_path):
    tower = _double(mode, residual="both" if mode == "blend" else "none")
    assert tower.output.shape[-1] == dim
    present = [n for n in siamese.SUBMODELS if n in {layer.name for layer in tower.layers}]
    trainable = {n for n in present if tower.get_layer(n).trainable_weights}
    assert len(tower.trainable_weights) == sum(len(tower.get_layer(n).trainable_weights) for n in trainable)
    if mode == "variant":
        assert trainable == {"variant"}
    elif mode == "concat":
        assert trainable == {"variant"} and not tower.get_layer("invariant").trainable
    elif mode == "joint":
        assert trainable == {"variant", "invariant"}
    else:
        assert trainable == {"blend"}
    x, y = _pairs()
    if mode == "blend":  # holds I, V and B: the .keras round trip of every sub-model
        path = os.path.join(str(tmp_path), "tower.keras")
        tower.save(path)
        back = keras.models.load_model(path)
        np.testing.assert_allclose(back(x["image_a"], training=False).numpy(),
                                   tower(x["image_a"], training=False).numpy(), atol=1e-5)
    # A few training steps with the thesis's loss and optimizer move only the trainable part.
    # Frozen sub-models keep every weight, batch-norm statistics included (inference mode).
    frozen = {id(v): v.numpy().copy() for n in present if n not in trainable
              for v in tower.get_layer(n).weights}
    model = siamese.build_siamese(tower)
    optimizer, loss_fn = siamese.thesis_optimizer(), ContrastiveLoss(1.0, "thesis")
    before = [v.numpy().copy() for v in model.trainable_weights]
    for _ in range(2):  # eager steps: no graph tracing, so the test stays fast
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        assert np.isfinite(float(loss))
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_weights))
    for v in tower.weights:
        if id(v) in frozen:
            np.testing.assert_array_equal(v.numpy(), frozen[id(v)])


def test_transfer_weights_from_variant_to_blend():
    source = _double("variant")
    target = _double("blend")
    copied = siamese.transfer_weights(source, target)
    assert copied == ["variant"]
    for a, b in zip(source.get_layer("variant").weights, target.get_layer("variant").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_thesis_optimizer_settings():
    opt = siamese.thesis_optimizer()
    assert isinstance(opt, keras.optimizers.Nadam)
    assert opt.clipnorm == 1.0 and float(opt.learning_rate) == pytest.approx(0.002)
    assert opt.beta_1 == 0.9 and opt.beta_2 == 0.999 and opt.epsilon == 1e-8
