"""ContrastiveLoss against naive float64 loops (tfa contrastive_loss mean; seed 004 eq 4.1.3)."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from finegrain_tf.losses.pairwise import ContrastiveLoss, contrastive_loss


def ref(y, pairs, margin, formulation):
    out = []
    for yi, (a, b) in zip(y, np.asarray(pairs, np.float64)):
        s = float(np.sum((a - b) ** 2))
        d = np.sqrt(s)
        if formulation == "hadsell":
            out.append(yi * d ** 2 + (1 - yi) * max(margin - d, 0.0) ** 2)
        else:
            out.append(0.5 * yi * s + 0.5 * (1 - yi) * max(0.0, margin - s))
    return np.array(out)


@pytest.mark.parametrize("formulation", ["hadsell", "thesis"])
@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_against_reference(formulation, margin):
    rng = np.random.default_rng(int(margin * 10))
    pairs = (rng.normal(size=(10, 2, 6)) * 0.4).astype(np.float32)
    y = rng.integers(0, 2, size=10)
    want = ref(y, pairs, margin, formulation)
    np.testing.assert_allclose(contrastive_loss(y, pairs, margin, formulation).numpy(), want,
                               rtol=1e-5, atol=1e-6)
    got = float(ContrastiveLoss(margin, formulation)(y.astype(np.float32), pairs))
    assert got == pytest.approx(want.mean(), rel=1e-5, abs=1e-6)


def test_closed_form():
    a = np.zeros((2, 3), np.float32)
    b = np.array([[0.3, 0.4, 0.0], [0.0, 0.0, 0.0]], np.float32)  # d = 0.5, 0
    pairs = np.stack([a, b], axis=1)
    # similar pairs: d^2 = 0.25, 0 ; dissimilar: (1 - 0.5)^2 = 0.25, 1
    np.testing.assert_allclose(contrastive_loss([1, 1], pairs).numpy(), [0.25, 0.0], atol=1e-7)
    np.testing.assert_allclose(contrastive_loss([0, 0], pairs).numpy(), [0.25, 1.0], atol=1e-7)
    # thesis: 0.5*S ; 0.5*max(0, 1 - S)
    np.testing.assert_allclose(contrastive_loss([1, 0], pairs, 1.0, "thesis").numpy(), [0.125, 0.5],
                               atol=1e-7)


def test_gradient_finite_at_coincident_pair():
    pairs = tf.Variable(np.ones((3, 2, 4), np.float32))
    for formulation in ("hadsell", "thesis"):
        with tf.GradientTape() as tape:
            loss = ContrastiveLoss(1.0, formulation)(np.array([0, 1, 0]), pairs)
        grad = tape.gradient(loss, pairs).numpy()
        assert np.all(np.isfinite(grad))
        assert float(loss) > 0


def test_validation_and_config():
    with pytest.raises(ValueError, match="'lecun'"):
        ContrastiveLoss(formulation="lecun")
    with pytest.raises(ValueError, match="-0.5"):
        ContrastiveLoss(margin=-0.5)
    with pytest.raises(ValueError, match="rank 2"):
        contrastive_loss([1], np.zeros((1, 4), np.float32))
    loss = ContrastiveLoss(0.7, "thesis")
    assert ContrastiveLoss.from_config(loss.get_config()).get_config() == loss.get_config()
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, ContrastiveLoss) and again.formulation == "thesis"


def test_siamese_fit_float16_pairs():
    rng = np.random.default_rng(0)
    inp_a, inp_b = keras.Input((5,)), keras.Input((5,))
    dense = keras.layers.Dense(3)
    out = keras.layers.Reshape((2, 3))(keras.layers.Concatenate()([dense(inp_a), dense(inp_b)]))
    model = keras.Model([inp_a, inp_b], out)
    model.compile(keras.optimizers.SGD(0.05), loss=ContrastiveLoss(1.0))
    xa, xb = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    hist = model.fit([xa, xb], y, epochs=2, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    val = contrastive_loss(y, model.predict([xa, xb], verbose=0).astype(np.float16))
    assert val.dtype == tf.float32 and np.all(np.isfinite(val.numpy()))
