"""Logit-adjusted, Balanced Softmax and LDAM-DRW losses against float64 numpy references."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.losses import (BalancedSoftmaxLoss, DeferredReweighting, LDAMLoss, LogitAdjustedLoss,
                                 class_balanced_weights)

COUNTS = [400, 90, 20, 6, 2]
C = len(COUNTS)


def _ce(z, y):
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z)) - z[y]


def ref_logit_adjusted(labels, logits, counts, tau):
    total = float(sum(counts))
    return np.array([_ce([float(logits[i][j]) + tau * math.log(counts[j] / total) for j in range(len(counts))], y)
                     for i, y in enumerate(labels)])


def ref_balanced_softmax(labels, logits, counts):
    out = []
    for i, y in enumerate(labels):
        # p_y = n_y exp(z_y) / sum_j n_j exp(z_j)  (Ren et al. eq 4)
        m = max(float(v) for v in logits[i])
        denom = sum(counts[j] * math.exp(float(logits[i][j]) - m) for j in range(len(counts)))
        out.append(-math.log(counts[y] * math.exp(float(logits[i][y]) - m) / denom))
    return np.array(out)


def ref_ldam(labels, logits, counts, max_margin, scale, weights=None):
    raw = [n ** -0.25 for n in counts]
    margins = [r * max_margin / max(raw) for r in raw]
    out = []
    for i, y in enumerate(labels):
        z = [scale * (float(logits[i][j]) - (margins[j] if j == y else 0.0)) for j in range(len(counts))]
        out.append((1.0 if weights is None else weights[y]) * _ce(z, y))
    return np.array(out)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, size=12)
    logits = (rng.normal(size=(12, C)) * 2).astype(np.float32)
    logits[0] = [50.0, -40.0, 0.0, 70.0, -90.0]
    return labels, logits


@pytest.mark.parametrize("tau", [0.0, 1.0, 2.0])
def test_logit_adjusted_matches_reference(batch, tau):
    labels, logits = batch
    expected = ref_logit_adjusted(labels, logits, COUNTS, tau)
    loss = LogitAdjustedLoss(COUNTS, tau=tau)
    assert float(loss(labels, logits)) == pytest.approx(expected.mean(), rel=1e-5)
    assert float(loss(np.eye(C)[labels], logits)) == pytest.approx(expected.mean(), rel=1e-5)
    if tau == 0.0:
        plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
        assert float(loss(labels, logits)) == pytest.approx(float(plain), rel=1e-6)


def test_balanced_softmax_matches_reference_and_tau_one(batch):
    labels, logits = batch
    expected = ref_balanced_softmax(labels, logits, COUNTS)
    bs = BalancedSoftmaxLoss(COUNTS)
    assert float(bs(labels, logits)) == pytest.approx(expected.mean(), rel=1e-5)
    assert float(bs(labels, logits)) == pytest.approx(float(LogitAdjustedLoss(COUNTS, 1.0)(labels, logits)),
                                                      rel=1e-5)


@pytest.mark.parametrize("drw_step", [-1, 0])
def test_ldam_matches_reference(batch, drw_step):
    labels, logits = batch
    cos = np.tanh(logits / 10.0)  # LDAM expects cosine logits
    weights = None if drw_step < 0 else list(class_balanced_weights(COUNTS, 0.9999))
    expected = ref_ldam(labels, cos, COUNTS, 0.5, 30.0, weights)
    loss = LDAMLoss(COUNTS, max_margin=0.5, scale=30.0, beta=0.9999, drw_step=drw_step)
    assert float(loss(labels, cos)) == pytest.approx(expected.mean(), rel=1e-5)
    assert float(loss(np.eye(C)[labels], cos)) == pytest.approx(expected.mean(), rel=1e-5)


def test_ldam_set_step_switches_weights(batch):
    labels, logits = batch
    cos = np.tanh(logits / 10.0)
    loss = LDAMLoss(COUNTS, drw_step=5)
    plain = ref_ldam(labels, cos, COUNTS, 0.5, 30.0).mean()
    drw = ref_ldam(labels, cos, COUNTS, 0.5, 30.0, list(class_balanced_weights(COUNTS, 0.9999))).mean()
    fn = tf.function(lambda y, z: loss(y, z))  # the switch must reach an already traced graph
    assert loss.set_step(4) is False
    assert float(fn(labels, cos)) == pytest.approx(plain, rel=1e-5)
    assert loss.set_step(5) is True
    assert float(fn(labels, cos)) == pytest.approx(drw, rel=1e-5)
    assert loss.set_step(0) is False
    assert float(fn(labels, cos)) == pytest.approx(plain, rel=1e-5)
    never = LDAMLoss(COUNTS, drw_step=-1)
    assert never.set_step(10 ** 6) is False


def test_ldam_drw_inside_model_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.integers(0, C, size=32)
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(C, activation="tanh")(inputs)
    model = keras.Model(inputs, outputs)
    loss = LDAMLoss(COUNTS, drw_step=6)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(loss.drw_active.numpy()))

    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[DeferredReweighting(loss), Probe()])
    assert seen == [0.0] * 6 + [1.0] * 6  # 4 steps/epoch, switch at step 6
    assert all(np.isfinite(history.history["loss"]))
    # The compiled train step reads the variable: loss on identical data jumps when DRW turns on.
    loss.set_step(0)
    before = model.evaluate(x, y, verbose=0)
    loss.set_step(6)
    after = model.evaluate(x, y, verbose=0)
    expected_ratio = ref_ldam(y, model.predict(x, verbose=0), COUNTS, 0.5, 30.0,
                              list(class_balanced_weights(COUNTS, 0.9999))).mean() / \
        ref_ldam(y, model.predict(x, verbose=0), COUNTS, 0.5, 30.0).mean()
    assert after / before == pytest.approx(expected_ratio, rel=1e-4)
    assert abs(after / before - 1.0) > 1e-3


@pytest.mark.parametrize("cls, kwargs", [
        (LogitAdjustedLoss, {"tau": 1.5}),
        (BalancedSoftmaxLoss, {}),
        (LDAMLoss, {"max_margin": 0.3, "scale": 16.0, "beta": 0.999, "drw_step": 100}),
])
def test_config_round_trip_keras_save_and_finite_grads(tmp_path, batch, cls, kwargs):
    labels, logits = batch
    loss = cls(COUNTS, **kwargs)
    clone = cls.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert float(clone(labels, logits)) == pytest.approx(float(loss(labels, logits)), rel=1e-7)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(C)(inputs))
    model.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    model.fit(x, labels[:8], epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is cls and loaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, labels[:8], verbose=0), model.evaluate(x, labels[:8], verbose=0),
                               rtol=1e-6)
    big = tf.Variable(np.array([[1e4, -1e4, 0.0, 1e4, -1e4]] * 2, np.float32))
    with tf.GradientTape() as tape:
        value = loss(np.array([1, 4]), big)
    grad = tape.gradient(value, big)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad.numpy()))


def test_mixed_precision_and_errors(batch):
    labels, logits = batch
    for loss in (LogitAdjustedLoss(COUNTS), BalancedSoftmaxLoss(COUNTS), LDAMLoss(COUNTS, drw_step=0)):
        value = loss(labels, tf.cast(logits, tf.float16))
        assert value.dtype == tf.float32 and np.isfinite(float(value))
        with pytest.raises(ValueError, match="label 9 is outside"):
            loss(np.array([9]), logits[:1])
    with pytest.raises(ValueError, match="drw_step"):
        LDAMLoss(COUNTS, drw_step=-5)
    with pytest.raises(ValueError, match="scale"):
        LDAMLoss(COUNTS, scale=0.0)
    with pytest.raises(ValueError, match=r"samples_per_class\[0\] = 0"):
        BalancedSoftmaxLoss([0, 3])
    with pytest.raises(ValueError, match="tau"):
        LogitAdjustedLoss(COUNTS, tau=float("nan"))
