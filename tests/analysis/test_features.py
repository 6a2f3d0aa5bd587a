"""Feature extraction, streaming class means and .npz round trips."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from finegrain_tf.analysis.features import (  # noqa: E402
    ClassMeanAccumulator, class_means, class_means_from_features, extract_features, feature_model,
    load_class_means, load_features, save_class_means, save_features)


@pytest.fixture(scope="module")
def model_and_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(22, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=22)
    labels[:4] = [0, 1, 2, 3]
    inp = keras.Input((4, 4, 3))
    h = keras.layers.Flatten()(inp)
    emb = keras.layers.Dense(6, activation="relu", name="embedding")(h / 255.0)
    out = keras.layers.Dense(4, name="logits")(emb)
    model = keras.Model(inp, out)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)
    return model, images, labels, ds


def naive_means(f, y, c):
    means = np.zeros((c, f.shape[1]))
    counts = np.zeros(c, int)
    for i in range(len(y)):
        means[y[i]] += f[i].astype(np.float64)
        counts[y[i]] += 1
    for k in range(c):
        if counts[k]:
            means[k] /= counts[k]
    return means, counts


def test_extract_features_matches_direct_call(model_and_data):
    model, images, labels, ds = model_and_data
    emb = feature_model(model, "embedding")
    feats, labs = extract_features(emb, ds, progress=False)
    np.testing.assert_allclose(feats, np.asarray(emb(images)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labs, labels)
    assert feats.shape == (22, 6) and feats.dtype == np.float32
    f2, l2 = extract_features(emb, ds, max_batches=2, progress=False)
    assert f2.shape == (10, 6)
    np.testing.assert_array_equal(l2, labels[:10])


def test_extract_features_flattens_maps_and_accepts_layers_and_dicts():
    images = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
    layer = keras.layers.Conv2D(4, 1, use_bias=False, kernel_initializer="ones")
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.array([1, 0])}).batch(2)
    feats, labs = extract_features(layer, ds, progress=False)
    assert feats.shape == (2, 3 * 3 * 4)
    np.testing.assert_allclose(feats[0, :4], [images[0, 0, 0].sum()] * 4)
    assert labs.tolist() == [1, 0]


def test_class_means_streaming_matches_naive(model_and_data):
    model, images, labels, ds = model_and_data
    emb = feature_model(model)
    means, counts = class_means(emb, ds, progress=False)
    want_m, want_c = naive_means(np.asarray(emb(images)), labels, 4)
    np.testing.assert_allclose(means, want_m, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(counts, want_c)
    m6, c6 = class_means(emb, ds, num_classes=6, progress=False)
    assert m6.shape == (6, 6) and c6[4:].tolist() == [0, 0]
    np.testing.assert_array_equal(m6[4:], 0)


def test_accumulator_grows_and_checks():
    acc = ClassMeanAccumulator()
    acc.update(np.ones((2, 3)), [0, 0])
    acc.update(2 * np.ones((1, 3)), [3])
    means, counts = acc.result()
    assert counts.tolist() == [2, 0, 0, 1]
    np.testing.assert_array_equal(means[3], [2, 2, 2])
    with pytest.raises(ValueError, match="dimension changed from 3 to 4"):
        acc.update(np.ones((1, 4)), [0])
    with pytest.raises(ValueError, match="-1"):
        acc.update(np.ones((1, 3)), [-1])
    with pytest.raises(ValueError, match="num_classes=2"):
        ClassMeanAccumulator(2).update(np.ones((1, 3)), [5])
    with pytest.raises(ValueError, match="no features"):
        ClassMeanAccumulator().result()
    rng = np.random.default_rng(1)
    f, y = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    m, c = class_means_from_features(f, y)
    wm, wc = naive_means(f, y, 3)
    np.testing.assert_allclose(m, wm, rtol=1e-12)
    np.testing.assert_array_equal(c, wc)


def test_npz_roundtrips(tmp_path):
    rng = np.random.default_rng(2)
    f, y = rng.normal(size=(7, 3)).astype(np.float32), rng.integers(0, 2, 7)
    p = save_features(str(tmp_path / "a" / "f.npz"), f, y, class_names=["x", "y"])
    z = load_features(p)
    np.testing.assert_array_equal(z["features"], f)
    np.testing.assert_array_equal(z["labels"], y)
    assert z["class_names"].tolist() == ["x", "y"]
    p2 = save_class_means(str(tmp_path / "m.npz"), np.eye(2), [3, 4], class_names=["a", "b"])
    means, counts, names = load_class_means(p2)
    np.testing.assert_array_equal(means, np.eye(2))
    assert counts.tolist() == [3, 4] and names == ["a", "b"]
    with pytest.raises(ValueError, match="not a class-means file"):
        load_class_means(p)
    with pytest.raises(ValueError, match="not a features file"):
        load_features(p2)


def test_errors(model_and_data):
    model, images, labels, _ = model_and_data
    with pytest.raises(ValueError, match="'nope'"):
        feature_model(model, "nope")
    unbatched = tf.data.Dataset.from_tensor_slices((np.zeros(3, np.float32), np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="batched"):
        extract_features(keras.layers.Dense(2), unbatched, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, tf.data.Dataset.from_tensor_slices(
            (images[:0], labels[:0])).batch(2), progress=False)
    with pytest.raises(ValueError, match="max_batches"):
        extract_features(model, [], max_batches=0)
