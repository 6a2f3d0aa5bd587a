"""Tests of the classifier heads: poolings, flip-averaged inference, the anchor-vote head, and the
data-dependent initialisers of `finegrain_tf.train.initialization` that act on them."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from finegrain_tf.layers import KernelPooling, estimate_gamma  # noqa: E402
from finegrain_tf.models import heads  # noqa: E402
from finegrain_tf.train import initialization  # noqa: E402
from finegrain_tf.train.config import build_config  # noqa: E402

S = 32  # small_cnn: 4x4x256 feature map
CONFIGS = ["configs/cub200_kernel_pooling.yaml", "configs/cub200_compact_bilinear.yaml",
           "configs/cub200_bilinear.yaml", "configs/synthetic_kernel_pooling.yaml"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(compact_dim=24, kernel_pooling=dict(order=3, dims=16, gamma=0.5))


@pytest.fixture(scope="module")
def synthetic():
    from finegrain_tf.data import synthetic
    data = synthetic.generate(num_classes=4, num_superclasses=2, train_per_class=8, val_per_class=0,
                              test_per_class=0, image_size=S, seed=0)
    return data.images["train"].astype(np.float32), data.labels["train"]


def _images(n=2, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, size=(n, S, S, 3)).astype(np.float32)


@pytest.mark.parametrize("pooling,dim", [("avg", 256), ("bilinear", 256 * 256),
                                         ("compact_bilinear", 24), ("kernel", 1 + 256 + 32)])
def test_poolings_shapes_and_embedding_contract(pooling, dim):
    model = heads.build_classifier("small_cnn", pooling=pooling, num_classes=5, input_size=S, **SMALL)
    x = _images()
    assert model(x).shape == (2, 5)
    assert model.get_layer("embedding").output.shape == (None, dim)
    assert model.output.dtype == "float32"


def test_unknown_pooling_and_coefficients_raise():
    with pytest.raises(ValueError, match="'max'"):
        heads.build_classifier("small_cnn", pooling="max", num_classes=3, input_size=S)
    with pytest.raises(ValueError, match="'a,b'"):
        heads.parse_coefficients("a,b")
    assert heads.parse_coefficients("1,0.5,0.25") == [1.0, 0.5, 0.25]
    assert heads.parse_coefficients("rbf") == "rbf"


def test_flip_test_averages_logits_of_image_and_mirror():
    kwargs = dict(pooling="kernel", num_classes=3, input_size=S, embedding_dim=8, **SMALL)
    flip = heads.build_classifier("small_cnn", flip_test=True, **kwargs)
    plain = heads.build_classifier("small_cnn", flip_test=False, **kwargs)
    plain.set_weights(flip.get_weights())
    x = _images(3)
    expected = 0.5 * (plain(x).numpy() + plain(x[:, :, ::-1]).numpy())
    np.testing.assert_allclose(flip(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flip.predict_on_batch(x), expected, rtol=1e-4, atol=1e-5)
    # training mode: no flip, batch unchanged
    np.testing.assert_allclose(flip(x, training=True).numpy(), plain(x, training=True).numpy(),
                               rtol=1e-4, atol=1e-5)
    emb = keras.Model(flip.inputs, flip.get_layer("embedding").output)(x)
    assert emb.shape == (3, 8)


@pytest.fixture(scope="module")
def flip_kernel_model():
    return heads.build_classifier("small_cnn", pooling="kernel", num_classes=3, input_size=S,
                                  flip_test=True, **SMALL)


def test_keras_round_trip_with_flip_and_kernel_pooling(flip_kernel_model, tmp_path):
    model = flip_kernel_model
    x = _images()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    assert isinstance(loaded.get_layer("pool"), KernelPooling)
    assert loaded.get_layer("flip_augment").__class__ is heads.FlipTestAugment


def test_saved_model_export_loads_in_tf1_session(flip_kernel_model, tmp_path):
    model = flip_kernel_model
    x = _images()
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", model.call,
                         input_signature=[tf.TensorSpec([None, S, S, 3], tf.float32)])
    path = str(tmp_path / "sm")
    archive.write_out(path)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        (inp,) = sig.inputs.values()
        (out,) = sig.outputs.values()
        got = sess.run(out.name, feed_dict={inp.name: x})
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_logistic_regression_init_and_gamma_estimate(synthetic):
    images, labels = synthetic
    model = heads.build_classifier("small_cnn", pooling="kernel", num_classes=5, input_size=S,
                                   compact_dim=24, kernel_pooling=dict(order=3, dims=16),
                                   flip_test=True)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    pool = model.get_layer("pool")
    gammas = initialization.adapt_kernel_pooling_gamma(model, ds)
    info = initialization.init_classifier_by_logistic_regression(model, ds, C=100.0)
    # gamma = 1 / mean <x, y> over the feature vectors feeding the pooling (flip-doubled batches)
    maps = keras.Model(model.inputs, pool.input).predict(images, batch_size=16, verbose=0)
    assert gammas["pool"] == pytest.approx(estimate_gamma(maps), rel=1e-4)
    assert pool.effective_gamma() == pytest.approx(gammas["pool"], rel=1e-5)
    # the logits layer now reproduces the fitted classifier: accuracy well above chance (1/4)
    predictions = np.argmax(model.predict(images, batch_size=16, verbose=0), -1)
    accuracy = float(np.mean(predictions == labels))
    assert info["num_examples"] == len(labels)
    assert accuracy == pytest.approx(info["train_accuracy"], abs=1e-6)
    assert accuracy > 0.6
    bias = model.get_layer("logits").bias.numpy()
    assert bias[4] < bias[:4].min()  # class 4 is absent from the data
    # given gammas are kept unless forced
    assert initialization.adapt_kernel_pooling_gamma(model, ds, steps=1) == {}
    forced = initialization.adapt_kernel_pooling_gamma(model, ds, steps=1, force=True)
    assert forced["pool"] == pytest.approx(estimate_gamma(maps[:32]), rel=1e-4)


def test_head_trains_a_few_steps_with_clipping(synthetic):
    images, labels = synthetic
    model = heads.build_classifier("small_cnn", pooling="kernel", num_classes=4, input_size=S,
                                   flip_test=True, **SMALL)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipvalue=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    alpha0 = model.get_layer("pool").alpha.numpy().copy()
    history = model.fit(images, labels, batch_size=16, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(model.get_layer("pool").alpha.numpy(), alpha0)  # coefficients learned


def test_mixed_precision_head():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = heads.build_classifier("small_cnn", pooling="kernel", num_classes=3, input_size=S,
                                       flip_test=True, **SMALL)
        x = tf.constant(_images())
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(logits ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        assert logits.dtype == "float32"
        assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)
        assert model.predict_on_batch(x).shape == (2, 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("path", CONFIGS)
def test_configs_load_and_map_to_build_kwargs(path):
    cfg = build_config([os.path.join(ROOT, path)])
    kwargs = heads.classifier_kwargs_from_config(cfg.model)
    assert kwargs["pooling"] == cfg.model.pooling and kwargs["flip_test"]
    assert cfg.optimizer.clip_value == 1.0
    if cfg.model.pooling == "kernel":
        assert kwargs["kernel_pooling"].gamma is None and kwargs["kernel_pooling"].order == 4
    pool = heads.make_pooling(**{k: v for k, v in kwargs.items()
                                 if k in ("pooling", "compact_dim", "kernel_pooling")})
    assert pool.name == "pool"


def test_synthetic_config_builds_classifier():
    cfg = build_config([os.path.join(ROOT, "configs/synthetic_kernel_pooling.yaml")])
    model = heads.build_classifier(cfg.model.backbone, num_classes=4, input_size=cfg.data.image_size,
                                   **heads.classifier_kwargs_from_config(cfg.model))
    assert model.get_layer("embedding").output.shape == (None, 1 + 256 + 3 * 512)


def test_anchor_vote_head_matches_eq_2_3_and_round_trips(synthetic, tmp_path):
    from finegrain_tf.layers import AnchorSoftVote
    model = heads.build_classifier("small_cnn", num_classes=4, input_size=S, embedding_dim=8,
                                   head="anchor_vote", anchors_per_class=2, anchor_gamma=5.0)
    assert isinstance(model.get_layer("logits"), AnchorSoftVote)
    images, labels = synthetic
    used = initialization.init_anchors_by_kmeans(model, [(images, labels)])
    assert used == len(labels)
    # softmax of the logits is eq 2.3 on the L2-normalised embedding (naive float64 numpy).
    unit = keras.Model(model.inputs, model.get_layer("embedding_l2").output)(images[:3]).numpy()
    anchors = model.get_layer("logits").anchors.numpy().astype(np.float64)
    votes = np.exp(-5.0 * ((unit[:, None, None, :] - anchors[None]) ** 2).sum(-1)).sum(-1)
    np.testing.assert_allclose(tf.nn.softmax(model(images[:3])).numpy(),
                               votes / votes.sum(1, keepdims=True), atol=1e-5)
    # k-means put every class's anchors among that class's embeddings: near, not random.
    emb = keras.Model(model.inputs, model.get_layer("embedding_l2").output)(images).numpy()
    for c in range(4):
        centre = emb[labels == c].mean(0)
        assert np.linalg.norm(anchors[c].mean(0) - centre) < 0.5
    path = str(tmp_path / "anchor.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(images[:3]), model(images[:3]),
                               atol=1e-6)


def test_anchor_vote_head_rejects_prior_bias_and_linear_init():
    with pytest.raises(ValueError, match="prior"):
        heads.build_classifier("small_cnn", num_classes=4, input_size=S, head="anchor_vote",
                               bias_init="prior")
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        heads.build_classifier("small_cnn", num_classes=4, input_size=S, head="mlp")
    linear = heads.build_classifier("small_cnn", num_classes=4, input_size=S)
    with pytest.raises(ValueError, match="anchor_vote"):
        initialization.init_anchors_by_kmeans(linear, [(_images(4), np.arange(4))])


def test_kernel_pooling_settings_are_one_object():
    cfg = build_config([], ["model.pooling=kernel", "model.kernel_pooling.order=2",
                            "model.kernel_pooling.dims=8", "model.kernel_pooling.gamma=0.25"])
    pool = heads.make_pooling("kernel", kernel_pooling=cfg.model.kernel_pooling)
    assert (pool.order, pool.gamma) == (2, 0.25)
    with pytest.raises(ValueError, match="unknown kernel_pooling keys.*'kernel_order'"):
        heads.make_pooling("kernel", kernel_pooling={"kernel_order": 2})
