"""Long-tailed subsampling and balanced subsets (seed 000 §5.4.1, §4.2.2)."""

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data.long_tail import (balanced_subset, labels_from_dataset, long_tailed_counts,
                                         make_long_tailed, take_indices)


@pytest.fixture(scope="module")
def cifar10_like():
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(10), 5000))


@pytest.mark.parametrize("imbalance_factor", [10, 20, 50, 100, 200])
def test_cifar10_profile_is_exact(cifar10_like, imbalance_factor):
    idx = make_long_tailed(cifar10_like, imbalance_factor, seed=1)
    counts = np.bincount(cifar10_like[idx], minlength=10)
    expected = [int(np.floor(5000 * imbalance_factor ** (-i / 9) + 1e-6)) for i in range(10)]
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 5000 and counts.max() / counts.min() == imbalance_factor
    assert np.all(np.diff(idx) > 0)  # sorted, unique
    assert idx.dtype == np.int64


def test_cifar100_profile_and_counts_helper():
    counts = long_tailed_counts(500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5 and np.all(np.diff(counts) <= 0)
    # the floor with tolerance keeps exact integers: 500 * 100^(-1/2) = 50 exactly
    assert long_tailed_counts(500, 3, 100).tolist() == [500, 50, 5]
    assert long_tailed_counts(7, 4, 1).tolist() == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="0.5"):
        long_tailed_counts(10, 3, 0.5)
    with pytest.raises(ValueError, match="class 2"):
        long_tailed_counts(10, 3, 50)


def test_deterministic_under_seed(cifar10_like):
    a = make_long_tailed(cifar10_like, 50, seed=3)
    b = make_long_tailed(cifar10_like, 50, seed=3)
    c = make_long_tailed(cifar10_like, 50, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.bincount(cifar10_like[a]), np.bincount(cifar10_like[c]))


def test_class_order_and_errors():
    labels = np.repeat(np.arange(4), 8)
    order = [2, 0, 3, 1]
    idx = make_long_tailed(labels, 8, class_order=order)
    counts = np.bincount(labels[idx], minlength=4)
    assert counts[2] == 8 and counts[1] == 1 and counts[0] == 4 and counts[3] == 2
    shuffled = make_long_tailed(labels, 8, seed=5, class_order="random")
    assert sorted(np.bincount(labels[shuffled], minlength=4).tolist()) == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="permutation"):
        make_long_tailed(labels, 8, class_order=[0, 0, 1, 2])
    with pytest.raises(ValueError, match="class 4 has no example"):
        make_long_tailed(labels, 8, num_classes=5)
    with pytest.raises(ValueError, match="class 0 has 8 examples"):
        make_long_tailed(labels, 8, n_max=9)
    with pytest.raises(ValueError, match="2.5"):
        make_long_tailed(np.array([0, 1, 2.5]), 2)


def test_n_max_default_is_smallest_class():
    labels = np.concatenate([np.repeat(0, 30), np.repeat(1, 12), np.repeat(2, 40)])
    idx = make_long_tailed(labels, 4)
    assert np.bincount(labels[idx]).tolist() == [12, 6, 3]


def test_dataset_input_and_take_indices():
    labels = np.repeat(np.arange(3), 9)
    images = np.arange(27, dtype=np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    idx = make_long_tailed(ds, 9)
    np.testing.assert_array_equal(idx, make_long_tailed(labels, 9))
    kept = list(take_indices(ds, idx).as_numpy_iterator())
    assert [int(x[0]) for x, _ in kept] == idx.tolist()
    assert np.bincount([int(y) for _, y in kept]).tolist() == [9, 3, 1]
    dict_ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(5)
    np.testing.assert_array_equal(labels_from_dataset(dict_ds, progress=False), labels)


def test_balanced_subset():
    labels = np.concatenate([np.repeat(0, 50), np.repeat(1, 7), np.repeat(2, 20)])
    idx = balanced_subset(labels, cap=10, seed=2)
    assert np.bincount(labels[idx]).tolist() == [10, 7, 10]
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, balanced_subset(labels, cap=10, seed=2))
    assert not np.array_equal(idx, balanced_subset(labels, cap=10, seed=3))
    np.testing.assert_array_equal(balanced_subset(labels, cap=100), np.arange(77))
    with pytest.raises(ValueError, match="0"):
        balanced_subset(labels, cap=0)
