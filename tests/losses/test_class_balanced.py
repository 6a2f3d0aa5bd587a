"""Class-balanced loss (seed 000 ch.5) against naive float64 numpy references."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.losses import (ClassBalancedLoss, class_balanced_loss, class_balanced_weights, count_labels,
                                 effective_number)

COUNTS = [500, 120, 40, 9, 3]
C = len(COUNTS)


# ------------------------------------------------------------------------------------------------
# naive float64 references (explicit loops)


def ref_weights(counts, beta):
    w = [(1.0 - beta) / (1.0 - beta ** n) for n in counts]
    s = sum(w)
    return [x * len(counts) / s for x in w]


def _log_sigmoid(x):
    # log(1 / (1 + exp(-x))) evaluated stably in float64
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_cb(labels, logits, counts, beta, loss_type, gamma=1.0):
    w = ref_weights(counts, beta)
    out = []
    for i, y in enumerate(labels):
        z = [float(v) for v in logits[i]]
        if loss_type == "softmax":
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            out.append(w[y] * (lse - z[y]))
            continue
        total = 0.0
        for j, zj in enumerate(z):
            zt = zj if j == y else -zj  # eq 5.9
            log_pt = _log_sigmoid(zt)
            term = -log_pt
            if loss_type == "focal":
                log_one_minus_pt = _log_sigmoid(-zt)
                term *= math.exp(gamma * log_one_minus_pt)  # (1 - p_t)^gamma
            total += term
        out.append(w[y] * total)
    return np.array(out)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, size=16)
    logits = rng.normal(size=(16, C)) * 3
    logits[0, 0] = 80.0  # large logits
    logits[1, :] = [-60.0, 45.0, 90.0, -100.0, 30.0]
    logits[2, labels[2]] = -70.0
    return labels, logits.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# weights


def test_effective_number_closed_form():
    np.testing.assert_allclose(effective_number([1, 2, 3], 0.5), [1.0, 1.5, 1.75])
    np.testing.assert_allclose(effective_number([7, 100], 0.0), [1.0, 1.0])
    # beta -> 1: E_n -> n
    np.testing.assert_allclose(effective_number([10, 1000], 1 - 1e-9), [10, 1000], rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99, 0.999, 0.9999])
def test_weights_match_reference_and_sum_to_c(beta):
    w = class_balanced_weights(COUNTS, beta)
    np.testing.assert_allclose(w, ref_weights(COUNTS, beta), rtol=1e-10)
    assert w.sum() == pytest.approx(C, rel=1e-12)
    assert np.all(np.diff(w) >= -1e-12)  # rarer classes never weigh less


def test_beta_zero_is_unweighted_and_beta_one_is_inverse_frequency():
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 0.0), np.ones(C))
    w = class_balanced_weights([10, 100], 1 - 1e-9)
    assert w[0] / w[1] == pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize("bad, match", [
        (([5, 0, 3], 0.9), r"samples_per_class\[1\] = 0"),
        (([5, -2], 0.9), r"samples_per_class\[1\] = -2"),
        (([5, 2.5], 0.9), r"samples_per_class\[1\] = 2.5"),
        (([5, 2], 1.0), "beta .* 1.0"),
        (([5, 2], -0.1), "beta .* -0.1"),
])
def test_weight_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        class_balanced_weights(*bad)


def test_count_labels_array_onehot_and_dataset():
    labels = np.array([0, 2, 2, 1, 2, 0])
    np.testing.assert_array_equal(count_labels(labels, 4), [2, 1, 3, 0])
    np.testing.assert_array_equal(count_labels(np.eye(4)[labels], 4), [2, 1, 3, 0])
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((6, 2), np.float32), labels)).batch(4)
    np.testing.assert_array_equal(count_labels(ds, 4, progress=False), [2, 1, 3, 0])
    ds = tf.data.Dataset.from_tensor_slices({"image": np.zeros((6, 2)), "label": labels})
    np.testing.assert_array_equal(count_labels(ds, 4, progress=True), [2, 1, 3, 0])
    with pytest.raises(ValueError, match="4, outside"):
        count_labels([0, 4], 4)


# ------------------------------------------------------------------------------------------------
# losses vs reference


@pytest.mark.parametrize("loss_type, gamma", [("softmax", 1.0), ("sigmoid", 1.0), ("focal", 0.5),
                                              ("focal", 1.0), ("focal", 2.0)])
@pytest.mark.parametrize("beta", [0.0, 0.999])
def test_loss_matches_reference(batch, loss_type, gamma, beta):
    labels, logits = batch
    expected = ref_cb(labels, logits.astype(np.float64), COUNTS, beta, loss_type, gamma)
    per_example = class_balanced_loss(labels, logits, class_balanced_weights(COUNTS, beta), loss_type, gamma)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-5, atol=1e-5)
    loss = ClassBalancedLoss(COUNTS, beta=beta, loss_type=loss_type, gamma=gamma)
    # Keras reduction: mean over the batch of the per-example loss; one-hot targets give the same value.
    assert float(loss(labels, logits)) == pytest.approx(expected.mean(), rel=1e-5)
    assert float(loss(np.eye(C)[labels], logits)) == pytest.approx(expected.mean(), rel=1e-5)
    assert float(loss(labels[:, None].astype(np.float32), logits)) == pytest.approx(expected.mean(), rel=1e-5)


@pytest.mark.parametrize("loss_type", ["softmax", "sigmoid", "focal"])
def test_beta_zero_equals_unweighted(batch, loss_type):
    labels, logits = batch
    cb = ClassBalancedLoss(COUNTS, beta=0.0, loss_type=loss_type, gamma=2.0)(labels, logits)
    if loss_type == "softmax":
        plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    elif loss_type == "sigmoid":
        # keras BCE averages over classes; eq 5.10 sums them.
        plain = C * keras.losses.BinaryCrossentropy(from_logits=True)(np.eye(C)[labels], logits)
    else:
        plain = C * keras.losses.BinaryFocalCrossentropy(gamma=2.0, from_logits=True)(np.eye(C)[labels], logits)
    assert float(cb) == pytest.approx(float(plain), rel=1e-4)


def test_gamma_zero_focal_equals_sigmoid(batch):
    labels, logits = batch
    focal = ClassBalancedLoss(COUNTS, beta=0.99, loss_type="focal", gamma=0.0)(labels, logits)
    sigmoid = ClassBalancedLoss(COUNTS, beta=0.99, loss_type="sigmoid")(labels, logits)
    assert float(focal) == pytest.approx(float(sigmoid), rel=1e-7)


def test_from_probabilities(batch):
    labels, logits = batch
    logits = np.clip(logits, -4, 4)  # keep probabilities inside the clipping range
    for loss_type, probs in [("softmax", tf.nn.softmax(logits)), ("sigmoid", tf.sigmoid(logits)),
                             ("focal", tf.sigmoid(logits))]:
        a = ClassBalancedLoss(COUNTS, 0.9, loss_type, from_logits=False)(labels, probs)
        b = ClassBalancedLoss(COUNTS, 0.9, loss_type)(labels, logits)
        assert float(a) == pytest.approx(float(b), rel=1e-3)


@pytest.mark.parametrize("loss_type, gamma", [("softmax", 1.0), ("sigmoid", 1.0), ("focal", 0.2),
                                              ("focal", 0.5), ("focal", 2.0)])
def test_extreme_logits_finite_loss_and_gradients(loss_type, gamma):
    labels = np.array([0, 1, 2, 3])
    logits = tf.Variable(np.array([[1e4, -1e4, 1e4, 0.0, -1e4],
                                   [-1e4, -1e4, 1e4, 1e4, 0.0],
                                   [0.0, 0.0, 1e4, -1e4, 1e4],
                                   [1e4, 1e4, 1e4, -1e4, -1e4]], np.float32))
    loss_fn = ClassBalancedLoss(COUNTS, 0.9999, loss_type, gamma)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, logits)
    grad = tape.gradient(loss, logits)
    assert np.isfinite(float(loss)) and float(loss) > 1e3  # wrong confident logits cost a lot
    assert np.all(np.isfinite(grad.numpy()))
    assert np.any(grad.numpy() != 0)


def test_gradient_matches_reference_numerically(batch):
    labels, logits = batch
    z = tf.Variable(logits[3:6] / 3.0)
    fn = ClassBalancedLoss(COUNTS, 0.99, "focal", 0.5)
    with tf.GradientTape() as tape:
        loss = fn(labels[3:6], z)
    g = tape.gradient(loss, z).numpy()
    z0 = z.numpy().astype(np.float64)
    eps = 1e-5
    num = np.zeros_like(z0)
    for i in range(z0.shape[0]):
        for j in range(z0.shape[1]):
            zp, zm = z0.copy(), z0.copy()
            zp[i, j] += eps
            zm[i, j] -= eps
            num[i, j] = (ref_cb(labels[3:6], zp, COUNTS, 0.99, "focal", 0.5).mean()
                         - ref_cb(labels[3:6], zm, COUNTS, 0.99, "focal", 0.5).mean()) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-5)


def test_bad_labels_and_arguments():
    logits = np.zeros((2, C), np.float32)
    loss = ClassBalancedLoss(COUNTS)
    with pytest.raises(ValueError, match="label 5 is outside"):
        loss(np.array([0, 5]), logits)
    with pytest.raises(ValueError, match="label -1 is outside"):
        loss(np.array([-1, 0]), logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        tf.function(lambda y, z: loss(y, z))(tf.constant([0, 7]), tf.constant(logits))
    # Under XLA the assertion compiles to a no-op: the bad example's loss is NaN instead.
    for loss_type in ("softmax", "focal"):
        per_example = tf.function(jit_compile=True)(
                lambda y, z: class_balanced_loss(y, z, np.ones(C, np.float32), loss_type))
        out = per_example(tf.constant([0, 7]), tf.constant(logits)).numpy()
        assert np.isfinite(out[0]) and np.isnan(out[1])
    with pytest.raises(ValueError, match="6 classes"):
        loss(np.array([0, 1]), np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="'hinge'"):
        ClassBalancedLoss(COUNTS, loss_type="hinge")
    with pytest.raises(ValueError, match="-1"):
        ClassBalancedLoss(COUNTS, gamma=-1)
    with pytest.raises(ValueError, match=r"samples_per_class\[2\] = 0"):
        ClassBalancedLoss([3, 2, 0])


# ------------------------------------------------------------------------------------------------
# Keras integration


def test_get_config_round_trip(batch):
    labels, logits = batch
    loss = ClassBalancedLoss(COUNTS, beta=0.99, loss_type="focal", gamma=0.5, name="cbf")
    config = loss.get_config()
    assert config["samples_per_class"] == COUNTS and config["loss_type"] == "focal"
    clone = ClassBalancedLoss.from_config(config)
    assert float(clone(labels, logits)) == float(loss(labels, logits))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, ClassBalancedLoss)
    assert float(restored(labels, logits)) == float(loss(labels, logits))


def _tiny_model(num_classes=C, dtype=None):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", dtype=dtype)(inputs)
    outputs = keras.layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def test_model_fit_and_keras_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, C, size=40)
    model = _tiny_model()
    model.compile(optimizer="sgd", loss=ClassBalancedLoss(COUNTS, 0.999, "focal", 0.5))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, ClassBalancedLoss)
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)


def test_saved_model_round_trip(tmp_path, batch):
    labels, logits = batch
    loss = ClassBalancedLoss(COUNTS, 0.99, "focal", 0.5)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, C], tf.float32)])
        def __call__(self, y, z):
            return loss(y, z)

    path = os.path.join(tmp_path, "sm")
    tf.saved_model.save(M(), path)
    restored = tf.saved_model.load(path)
    assert float(restored(tf.constant(labels), tf.constant(logits))) == pytest.approx(float(loss(labels, logits)),
                                                                                        rel=1e-6)


def test_mixed_precision_pass(batch):
    labels, logits = batch
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _tiny_model(dtype=None)
        z16 = tf.cast(logits, tf.float16)
        loss = ClassBalancedLoss(COUNTS, 0.999, "focal", 0.5)
        value = loss(labels, z16)
        assert value.dtype == tf.float32
        expected = ref_cb(labels, z16.numpy().astype(np.float64), COUNTS, 0.999, "focal", 0.5).mean()
        assert float(value) == pytest.approx(expected, rel=1e-5)
        x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
        with tf.GradientTape() as tape:
            out = loss(labels[:8], model(x))
        grads = tape.gradient(out, model.trainable_variables)
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ------------------------------------------------------------------------------------------------
# §5.4.2 training support: prior bias + weight-decay exclusion


def test_prior_bias_initializer_and_sigmoid_start():
    from finegrain_tf.layers import PriorBias
    init = PriorBias(num_classes=100)
    b = keras.ops.convert_to_numpy(init((100,)))
    np.testing.assert_allclose(b, -math.log(99.0), rtol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-b)), 0.01, rtol=1e-5)  # sigmoid(b) = pi = 1/C
    assert PriorBias(prior=0.25).value == pytest.approx(-math.log(3.0))
    restored = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(restored, PriorBias) and restored.get_config() == init.get_config()
    with pytest.raises(ValueError, match="1"):
        PriorBias(num_classes=1)
    with pytest.raises(ValueError, match="1.5"):
        PriorBias(prior=1.5)
    # With the prior bias the initial CB sigmoid loss is far below the b = 0 one (seed's motivation).
    labels, zeros = np.array([0, 1]), np.zeros((2, 100), np.float32)
    counts = [10] * 100
    start_prior = ClassBalancedLoss(counts, 0.9, "sigmoid")(labels, zeros + b)
    start_zero = ClassBalancedLoss(counts, 0.9, "sigmoid")(labels, zeros)
    assert float(start_prior) < float(start_zero) / 10


def test_decay_variables_excludes_bias_and_batchnorm(tmp_path):
    from finegrain_tf.layers import PriorBias
    from finegrain_tf.train.optim import configure_weight_decay, decay_variables
    inner = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn")], name="backbone")
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    logits = keras.layers.Dense(5, bias_initializer=PriorBias(5), name="logits")(x)
    model = keras.Model(inputs, logits)
    names = lambda vs: sorted(v.path for v in vs)  # noqa: E731
    assert names(decay_variables(model)) == ["backbone/conv/kernel", "logits/kernel"]
    assert names(decay_variables(model, decay_bias=True)) == ["backbone/conv/bias", "backbone/conv/kernel",
                                                              "logits/bias", "logits/kernel"]
    assert len(decay_variables(model, True, True)) == len(model.trainable_variables) == 6
    # Keras decoupled weight decay leaves the excluded variables alone.
    opt = configure_weight_decay(keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5), model)
    bias_before = model.get_layer("logits").bias.numpy().copy()
    kernel_before = model.get_layer("logits").kernel.numpy().copy()
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    np.testing.assert_array_equal(model.get_layer("logits").bias.numpy(), bias_before)
    np.testing.assert_allclose(model.get_layer("logits").kernel.numpy(), kernel_before * (1 - 0.1 * 0.5), rtol=1e-6)
    path = os.path.join(tmp_path, "prior.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).get_layer("logits").bias.numpy(), -math.log(4.0),
                               rtol=1e-6)
