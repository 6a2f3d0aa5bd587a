"""Per-class, balanced and head/tail accuracy: numpy functions and Keras metrics."""

import json
import os

import keras
import numpy as np
import pytest

from finegrain_tf.metrics import (BalancedAccuracy, HeadTailAccuracy, balanced_accuracy, head_tail_report,
                                  per_class_accuracy)


def ref_per_class(t, p, c):
    out = []
    for k in range(c):
        idx = [i for i in range(len(t)) if t[i] == k]
        out.append(sum(1 for i in idx if p[i] == k) / len(idx) if idx else float("nan"))
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 6, size=200)
    t[t == 5] = 4  # class 5 absent from the test labels
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 6, size=200))
    return t, p


def test_per_class_and_balanced(data):
    t, p = data
    acc = per_class_accuracy(t, p, 6)
    np.testing.assert_allclose(acc, ref_per_class(t, p, 6), equal_nan=True)
    assert np.isnan(acc[5])
    assert balanced_accuracy(t, p, 6) == pytest.approx(np.mean(ref_per_class(t, p, 6)[:5]))
    scores = np.eye(6)[p] + 0.1  # scores are arg-maxed
    np.testing.assert_allclose(per_class_accuracy(t, scores, 6), acc, equal_nan=True)
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0], 2) == 0.5  # closed form
    with pytest.raises(ValueError, match="label 6 is outside"):
        per_class_accuracy([6], [0], 6)


def test_head_tail_report(data):
    t, p = data
    train_counts = [500, 150, 100, 60, 10, 3]
    report = head_tail_report(t, p, train_counts)
    json.dumps(report)  # JSON-friendly (no NaN, no numpy scalars)
    assert report["overall"] == pytest.approx(np.mean(t == p))
    head = np.isin(t, [0, 1, 2])
    assert report["head"]["accuracy"] == pytest.approx(np.mean(t[head] == p[head]))
    assert report["tail"]["accuracy"] == pytest.approx(np.mean(t[~head] == p[~head]))
    assert report["head"]["num_classes"] == 3 and report["tail"]["num_classes"] == 3
    assert report["many"]["num_classes"] == 3 and report["medium"]["num_classes"] == 1
    assert report["few"]["num_classes"] == 2
    few = np.isin(t, [4, 5])
    assert report["few"]["accuracy"] == pytest.approx(np.mean(t[few] == p[few]))
    assert report["few"]["balanced_accuracy"] == pytest.approx(ref_per_class(t, p, 6)[4])  # class 5 absent
    assert report["per_class"][5] is None
    custom = head_tail_report(t, p, train_counts, many=200, few=5, head_threshold=50)
    assert custom["head"]["num_classes"] == 4 and custom["many"]["num_classes"] == 1
    empty = head_tail_report([0, 1], [0, 0], [200, 300])
    assert empty["tail"]["accuracy"] is None and empty["head"]["accuracy"] == 0.5


def test_keras_metrics_streaming(data):
    t, p = data
    scores = np.eye(6, dtype=np.float32)[p]
    m = BalancedAccuracy(6)
    for i in range(0, 200, 64):
        m.update_state(t[i:i + 64], scores[i:i + 64])
    assert float(m.result()) == pytest.approx(balanced_accuracy(t, p, 6), rel=1e-6)
    m.reset_state()
    m.update_state(np.eye(6)[t], scores)  # one-hot y_true
    assert float(m.result()) == pytest.approx(balanced_accuracy(t, p, 6), rel=1e-6)
    counts = [500, 150, 100, 60, 10, 3]
    report = head_tail_report(t, p, counts)
    for group in ("head", "tail"):
        h = HeadTailAccuracy(counts, threshold=100, group=group)
        h.update_state(t.astype(np.float32), scores)
        assert float(h.result()) == pytest.approx(report[group]["accuracy"], rel=1e-6)
        clone = HeadTailAccuracy.from_config(h.get_config())
        assert clone.get_config() == h.get_config()
    with pytest.raises(ValueError, match="'middle'"):
        HeadTailAccuracy(counts, group="middle")


def test_metrics_in_model_compile_and_keras_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=48)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[BalancedAccuracy(3), HeadTailAccuracy([100, 100, 5], group="tail"),
                           HeadTailAccuracy([100, 100, 5], group="head")])
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    results = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0).argmax(-1)
    assert results["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, pred, 3), abs=1e-6)
    report = head_tail_report(y, pred, [100, 100, 5])
    assert results["tail_accuracy"] == pytest.approx(report["tail"]["accuracy"], abs=1e-6)
    assert results["head_accuracy"] == pytest.approx(report["head"]["accuracy"], abs=1e-6)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    again = loaded.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert again["balanced_accuracy"] == pytest.approx(results["balanced_accuracy"], abs=1e-6)
