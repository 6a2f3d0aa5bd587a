"""Long-tailed subsampling and balanced subsets (seed 000 §5.4.1, §4.2.2)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data.long_tail import balanced_subset, long_tailed_counts, make_long_tailed, take_indices
from finegrain_tf.utils.labels import labels_from_dataset

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


_CONFIGS = sorted(
        os.path.join(_ROOT, "configs", f) for f in os.listdir(os.path.join(_ROOT, "configs"))
        if f.startswith(("cifar10_lt_", "cifar100_lt_", "synthetic_lt_", "two_stage_balanced_finetune")))


def test_long_tail_configs_load_strictly():
    from finegrain_tf.losses import BalancedSoftmaxLoss, ClassBalancedLoss, LDAMLoss, LogitAdjustedLoss
    from finegrain_tf.train.config import build_config

    assert len(_CONFIGS) == 5 + 5 + 7 + 2
    for path in _CONFIGS:
        cfg = build_config([path])
        if os.path.basename(path).startswith("cifar"):
            n_max, num_classes = (5000, 10) if "cifar10_" in path else (500, 100)
            counts = long_tailed_counts(n_max, num_classes, cfg.data.imbalance_factor)
            # exact wherever n_max / IF is an integer; CIFAR-100-LT IF 200 has 500 / 200 = 2.5 -> 2 (as the
            # official data has), i.e. a realised IF of 250.
            assert counts[-1] == n_max // cfg.data.imbalance_factor
            if n_max % cfg.data.imbalance_factor == 0:
                assert counts[0] / counts[-1] == cfg.data.imbalance_factor
            assert cfg.loss.name == "class_balanced"
            assert (cfg.model.bias_init == "prior") == (cfg.loss.loss_type != "softmax"), path
        else:
            counts = long_tailed_counts(cfg.data.synthetic.train_per_class, cfg.data.synthetic.num_classes,
                                        cfg.data.imbalance_factor)
        loss = cfg.loss
        built = {
                "softmax": lambda: None,
                "class_balanced": lambda: ClassBalancedLoss(counts, loss.beta, loss.loss_type, loss.gamma),
                "logit_adjusted": lambda: LogitAdjustedLoss(counts, loss.tau),
                "balanced_softmax": lambda: BalancedSoftmaxLoss(counts),
                "ldam": lambda: LDAMLoss(counts, loss.max_margin, loss.scale, loss.beta, loss.drw_step),
        }[loss.name]()
        assert built is None or built.get_config()["samples_per_class"] == counts.tolist()
    stage1, stage2 = (build_config([p]) for p in _CONFIGS[-2:])
    assert stage1.train.model_dir == stage2.train.model_dir and stage2.train.steps > stage1.train.steps
    assert stage2.data.balanced_cap > 0 and stage1.data.balanced_cap == 0


def test_keep_shortfall_for_data_that_is_already_long_tailed():
    labels = np.repeat([0, 1, 2], [10, 3, 0 + 1])  # sizes 10, 3, 1
    with pytest.raises(ValueError, match=r"class 1 has 3 examples but the profile needs 5"):
        make_long_tailed(labels, 4.0, n_max=10)
    kept = make_long_tailed(labels, 4.0, n_max=10, keep_shortfall=True)  # targets 10, 5, 2
    np.testing.assert_array_equal(np.bincount(labels[kept], minlength=3), [10, 3, 1])
    with_empty = make_long_tailed(np.array([0] * 8 + [2] * 2), 2.0, num_classes=3, n_max=8, keep_shortfall=True)
    np.testing.assert_array_equal(np.bincount(np.array([0] * 8 + [2] * 2)[with_empty], minlength=3), [8, 0, 2])
