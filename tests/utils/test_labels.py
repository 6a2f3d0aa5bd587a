import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.utils.labels import count_labels, int_labels_tensor, labels_from_dataset, to_int_labels


def _naive_counts(labels, c):
    out = [0] * c
    for y in labels:
        out[int(y)] += 1
    return out


def test_to_int_labels_forms_agree():
    y = np.array([2, 0, 1, 2])
    onehot = np.eye(3)[y]
    for form in (y, list(y), y.astype(np.float32), y[:, None], onehot, onehot.astype(np.int32),
                 tf.constant(y), tf.constant(onehot), np.where(onehot > 0, 0.9, 0.05)):
        out = to_int_labels(form, 3)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("labels,message", [
    ([0, 1.5], r"labels must be integer class ids, got 1\.5"),
    ([0, float("nan")], r"got nan"),
    ([0, 3], r"labels contains 3, outside \[0, 3\)"),
    ([-1, 0], r"contains -1"),
    (np.eye(4)[[0, 1]], r"one-hot/scores of width 4 but num_classes=3"),
    (np.zeros((2, 2, 3)), r"got shape \(2, 2, 3\)"),
    (["a", "b"], r"integer class ids, got dtype <U1"),
])
def test_to_int_labels_refuses(labels, message):
    with pytest.raises(ValueError, match=message):
        to_int_labels(labels, 3)


def test_to_int_labels_flatten_and_name():
    np.testing.assert_array_equal(to_int_labels(np.array([[0, 1], [2, 2]]), flatten=True), [0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"^y_true contains 5"):
        to_int_labels([5], 2, name="y_true")


def test_int_labels_tensor_rounds_floats():
    out = int_labels_tensor(tf.constant([[1.0], [2.0], [0.0]]))
    assert out.dtype == tf.int64
    np.testing.assert_array_equal(out.numpy(), [1, 2, 0])


def test_count_labels_matches_naive_loop():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=97)
    expect = _naive_counts(y, 6)
    np.testing.assert_array_equal(count_labels(y, 6), expect)
    np.testing.assert_array_equal(count_labels(np.eye(6)[y], 6), expect)
    np.testing.assert_array_equal(count_labels(tf.constant(y), 6), expect)
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((97, 2), np.float32), y)).batch(10)
    np.testing.assert_array_equal(count_labels(ds, 6, progress=False), expect)
    # int 2-D that is not one-hot is a grid of ids
    np.testing.assert_array_equal(count_labels(np.array([[0, 1], [1, 1]]), 2), [1, 3])


def test_count_labels_refuses():
    with pytest.raises(ValueError, match=r"contains 4, outside \[0, 4\)"):
        count_labels([0, 4], 4)
    with pytest.raises(ValueError, match=r"num_classes must be a positive int, got 0"):
        count_labels([0], 0)


def test_labels_from_dataset_element_forms():
    y = np.array([1, 0, 2, 2, 1], np.int64)
    x = np.zeros((5, 2), np.float32)
    forms = [tf.data.Dataset.from_tensor_slices(y),
             tf.data.Dataset.from_tensor_slices((x, y)),
             tf.data.Dataset.from_tensor_slices((x, y, np.ones(5, np.float32))).batch(2),
             tf.data.Dataset.from_tensor_slices({"image": x, "label": y}),
             tf.data.Dataset.from_tensor_slices((x, np.eye(3, dtype=np.float32)[y])).batch(3)]
    for ds in forms:
        np.testing.assert_array_equal(labels_from_dataset(ds, 3, progress=False), y)
    with pytest.raises(ValueError, match=r"without the key 'label'"):
        labels_from_dataset(tf.data.Dataset.from_tensor_slices({"y": y}), progress=False)
