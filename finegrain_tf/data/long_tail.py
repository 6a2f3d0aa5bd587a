"""Long-tail data tools: exponential long-tailed subsampling (seed 000 §5.4.1) and the balanced subset
of the two-stage recipe (seed 000 §4.2.2 / §4.4.2).

* `make_long_tailed`: keeps n_i = floor(n_max * IF^(-i/(C-1))) examples of class i (0-indexed, in
  class-id order unless `class_order` says otherwise) -- the profile n = n_max * mu^i of §5.4.1 with
  mu = IF^(-1/(C-1)), so the largest class over the smallest is the imbalance factor IF. The floor is
  taken with a 1e-9 relative tolerance so that float round-off never loses an exact integer
  (5000 * 100^(-1) = 50, not 49). The realised IF is then exactly the requested one whenever
  n_max / IF is an integer (CIFAR: 5000 / {10, 20, 50, 100, 200}); otherwise it is
  n_max / floor(n_max / IF) and a warning is logged.
* `balanced_subset`: caps every class at `cap` examples (the "more balanced subset" of the second
  fine-tuning stage).

Both take an int label array (or, for `make_long_tailed`, a `tf.data.Dataset` of labelled examples) and
return the SORTED np.ndarray (int64) of kept indices; the choice of examples within a class is a
deterministic function of `seed`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.utils import checks
from finegrain_tf.utils.labels import labels_from_dataset, to_int_labels

_REL_TOL = 1e-9


def _labels(labels, num_classes: int | None = None) -> np.ndarray:
    if isinstance(labels, tf.data.Dataset):
        return labels_from_dataset(labels, num_classes=num_classes)
    return to_int_labels(labels, name="labels")


def long_tailed_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """n_i = floor(n_max * IF^(-i/(C-1))) for i = 0..C-1 (int64), with a 1e-9 relative tolerance."""
    checks.in_range(imbalance_factor, "imbalance_factor", 1.0, None)
    checks.positive_int(n_max, "n_max")
    checks.positive_int(num_classes, "num_classes")
    if num_classes == 1:
        return np.array([n_max], np.int64)
    i = np.arange(num_classes, dtype=np.float64)
    exact = n_max * np.power(float(imbalance_factor), -i / (num_classes - 1))
    counts = np.floor(exact * (1.0 + _REL_TOL)).astype(np.int64)
    if counts[-1] < 1:
        raise ValueError(f"imbalance_factor={imbalance_factor!r} leaves class {num_classes - 1} with "
                         f"{exact[-1]:.3g} < 1 examples (n_max={n_max})")
    return counts


def make_long_tailed(labels, imbalance_factor: float, seed: int = 0, num_classes: int | None = None,
                     n_max: int | None = None, class_order=None, keep_shortfall: bool = False) -> np.ndarray:
    """Sorted indices of an exponentially long-tailed subset (seed 000 §5.4.1, Fig 5.4).

    Args:
      labels: int label array [N], or a `tf.data.Dataset` (indices refer to its iteration order).
      imbalance_factor: IF >= 1, the largest class size over the smallest (1 keeps n_max per class).
      seed: selects which examples of each class are kept (deterministic).
      num_classes: C (default max(label) + 1); every class must have at least one example.
      n_max: size of the head class (default: the smallest available class size, so every class can
        supply its quota; CIFAR: 5000 / 500).
      class_order: None (class 0 is the head, as in the official code), "random" (a seed-permuted
        order) or an explicit permutation of range(C) listing classes from head to tail.
    Returns:
      np.ndarray int64 of kept indices, sorted ascending.
    """
    y = _labels(labels, num_classes)
    if num_classes is None:
        if not y.size:
            raise ValueError("labels is empty")
        num_classes = int(y.max()) + 1
    available = np.bincount(y, minlength=num_classes)
    if available.size > num_classes:
        raise ValueError(f"label {int(y.max())} is outside [0, {num_classes})")
    missing = np.flatnonzero(available == 0)
    if missing.size and not keep_shortfall:
        raise ValueError(f"class {int(missing[0])} has no example: cannot make a long-tailed profile")
    if n_max is None:
        n_max = int(available.min())
    targets = long_tailed_counts(n_max, num_classes, imbalance_factor)
    if class_order is None:
        order = np.arange(num_classes)
    elif isinstance(class_order, str) and class_order == "random":
        order = np.random.default_rng(seed).permutation(num_classes)
    else:
        order = np.asarray(class_order, np.int64)
        if order.shape != (num_classes,) or not np.array_equal(np.sort(order), np.arange(num_classes)):
            raise ValueError(f"class_order must be a permutation of range({num_classes}), got {class_order!r}")
    realised = targets[0] / targets[-1]
    if not np.isclose(realised, imbalance_factor, rtol=1e-12, atol=0):
        logging.warning("make_long_tailed: n_max=%d / IF=%s is not an integer; realised IF is %.4g",
                        n_max, imbalance_factor, realised)
    rng = np.random.default_rng(seed)
    kept = []
    for rank, cls in enumerate(order):
        idx = np.flatnonzero(y == cls)
        want = int(targets[rank])
        if idx.size < want and keep_shortfall:
            want = idx.size
        if idx.size < want:
            raise ValueError(f"class {int(cls)} has {idx.size} examples but the profile needs {want} "
                             f"(n_max={n_max}, imbalance_factor={imbalance_factor})")
        kept.append(rng.choice(idx, size=want, replace=False))
    return np.sort(np.concatenate(kept)).astype(np.int64)


def balanced_subset(labels, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted indices keeping at most `cap` random examples of every class (seed 000 §4.2.2)."""
    checks.positive_int(cap, "cap")
    y = _labels(labels)
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        kept.append(idx if idx.size <= cap else rng.choice(idx, size=cap, replace=False))
    if not kept:
        return np.zeros([0], np.int64)
    return np.sort(np.concatenate(kept)).astype(np.int64)


def take_indices(dataset: tf.data.Dataset, indices) -> tf.data.Dataset:
    """Keeps the elements of an (unbatched) dataset whose position is in `indices`."""
    keep = tf.constant(np.asarray(indices, np.int64))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keep, tf.ones_like(keep, dtype=tf.int32)), default_value=0)
    return dataset.enumerate().filter(lambda i, *e: table.lookup(i) > 0).map(
        lambda i, *e: e[0] if len(e) == 1 else e)
