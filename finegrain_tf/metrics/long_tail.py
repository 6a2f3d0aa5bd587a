"""Per-class, balanced and head/tail accuracy (seed 000 §4.4.2 Table 4.4, ch.5).

Numpy functions for evaluation reports plus stateful Keras metrics for `model.compile`.

Groups (by number of TRAINING images of a class, `train_class_counts`):
* head / tail: n >= head_threshold vs n < head_threshold (the seed's split, default 100);
* many / medium / few: n >= many, few <= n < many, n < few (defaults 100 and 20, as in the long-tail
  literature: many-shot > ~100, few-shot < 20).

Group "accuracy" is example-level top-1 over the test examples of that group's classes;
"balanced_accuracy" is the mean of the per-class accuracies of the group's classes that have test
examples. Empty groups report None (JSON-friendly, never NaN).
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _to_labels(y, num_classes: int | None = None, name: str = "y") -> np.ndarray:
    """Int labels [N] from int labels, or arg-max of [N, C] scores / one-hot."""
    if isinstance(y, (tf.Tensor, tf.Variable)):
        y = y.numpy()
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        if num_classes is not None and arr.shape[1] != num_classes:
            raise ValueError(f"{name} has {arr.shape[1]} columns but num_classes={num_classes}")
        arr = arr.argmax(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be labels [N] or scores [N, C], got shape {arr.shape}")
    if arr.size and arr.dtype.kind == "f" and np.any(arr != np.round(arr)):
        raise ValueError(f"{name} labels must be integers, got {arr[arr != np.round(arr)][0]!r}")
    arr = arr.astype(np.int64)
    if num_classes is not None and arr.size:
        bad = arr[(arr < 0) | (arr >= num_classes)]
        if bad.size:
            raise ValueError(f"{name} label {int(bad[0])} is outside [0, {num_classes})")
    return arr


def _pair(y_true, y_pred, num_classes):
    t = _to_labels(y_true, num_classes, "y_true")
    p = _to_labels(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} examples but y_pred has {p.shape[0]}")
    return t, p


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class (float64 [C]); NaN for classes with no example in y_true.

    y_pred: predicted labels [N] or scores/logits [N, C] (arg-maxed).
    """
    num_classes = _int(num_classes, "num_classes")
    t, p = _pair(y_true, y_pred, num_classes)
    total = np.bincount(t, minlength=num_classes).astype(np.float64)
    correct = np.bincount(t[t == p], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def balanced_accuracy(y_true, y_pred, num_classes: int) -> float:
    """Mean per-class accuracy over the classes present in y_true."""
    acc = per_class_accuracy(y_true, y_pred, num_classes)
    present = ~np.isnan(acc)
    if not present.any():
        raise ValueError("y_true is empty")
    return float(acc[present].mean())


def _group(t, p, acc, mask_classes) -> dict:
    ex = mask_classes[t]
    present = mask_classes & ~np.isnan(acc)
    return {
            "num_classes": int(mask_classes.sum()),
            "num_examples": int(ex.sum()),
            "accuracy": float((t[ex] == p[ex]).mean()) if ex.any() else None,
            "balanced_accuracy": float(acc[present].mean()) if present.any() else None,
    }


def head_tail_report(y_true, y_pred, train_class_counts, many: int = 100, few: int = 20,
                     head_threshold: int | None = None) -> dict:
    """JSON-friendly accuracy breakdown: overall, balanced, head/tail, many/medium/few, per class.

    Args:
      y_true: int labels [N].
      y_pred: predicted labels [N] or scores [N, C].
      train_class_counts: training images per class [C] (class_counts.json).
      many, few: many-shot n >= many; medium few <= n < many; few-shot n < few.
      head_threshold: head n >= head_threshold, tail below (default: `many`, i.e. the seed's 100).
    """
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"train_class_counts must be a non-empty 1-D array, got {train_class_counts!r}")
    if np.any(counts < 0):
        raise ValueError(f"train_class_counts has a negative count {counts[counts < 0][0]!r}")
    if not few <= many:
        raise ValueError(f"few={few!r} must be <= many={many!r}")
    head_threshold = many if head_threshold is None else head_threshold
    num_classes = counts.size
    t, p = _pair(y_true, y_pred, num_classes)
    if not t.size:
        raise ValueError("y_true is empty")
    acc = per_class_accuracy(t, p, num_classes)
    head = counts >= head_threshold
    many_m = counts >= many
    few_m = counts < few
    return {
            "num_examples": int(t.size),
            "num_classes": int(num_classes),
            "overall": float((t == p).mean()),
            "balanced": float(np.nanmean(acc)),
            "thresholds": {"head": int(head_threshold), "many": int(many), "few": int(few)},
            "head": _group(t, p, acc, head),
            "tail": _group(t, p, acc, ~head),
            "many": _group(t, p, acc, many_m),
            "medium": _group(t, p, acc, ~many_m & ~few_m),
            "few": _group(t, p, acc, few_m),
            "per_class": [None if np.isnan(a) else float(a) for a in acc],
    }


# --------------------------------------------------------------------------------------------------
# Keras metrics


class _ConfusionCounts(keras.metrics.Metric):
    """Accumulates per-class (correct, total) counts from sparse or one-hot y_true and scores y_pred."""

    def __init__(self, num_classes: int, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _int(num_classes, "num_classes")
        self.correct = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="correct",
                                         dtype="float32")
        self.total = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="total",
                                       dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        if y_true.shape.rank is not None and y_true.shape.rank >= 2 and y_true.shape[-1] == self.num_classes \
                and self.num_classes > 1:
            labels = tf.argmax(y_true, axis=-1, output_type=tf.int32)
        else:
            labels = tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32) if y_true.dtype.is_floating \
                else tf.cast(y_true, tf.int32)
        labels = tf.reshape(labels, [-1])
        if y_pred.shape.rank is not None and y_pred.shape.rank >= 2 and y_pred.shape[-1] != 1:
            pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        else:
            pred = tf.cast(y_pred, tf.int32)
        pred = tf.reshape(pred, [-1])
        w = tf.ones_like(labels, tf.float32) if sample_weight is None else \
            tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        w = tf.broadcast_to(w, tf.shape(labels))
        # Out-of-range labels are dropped by unsorted_segment_sum (ids >= C or < 0 are ignored).
        hit = tf.cast(tf.equal(labels, pred), tf.float32) * w
        self.total.assign_add(tf.math.unsorted_segment_sum(w, labels, self.num_classes))
        self.correct.assign_add(tf.math.unsorted_segment_sum(hit, labels, self.num_classes))

    def reset_state(self):
        self.correct.assign(tf.zeros_like(self.correct))
        self.total.assign(tf.zeros_like(self.total))

    def per_class(self):
        return tf.math.divide_no_nan(self.correct, self.total)


@keras.saving.register_keras_serializable(package="finegrain_tf")
class BalancedAccuracy(_ConfusionCounts):
    """Mean per-class top-1 accuracy over the classes seen so far (stateful, streaming)."""

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        present = self.total > 0
        n = tf.reduce_sum(tf.cast(present, tf.float32))
        return tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, self.per_class(), 0.0)), n)

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name}


@keras.saving.register_keras_serializable(package="finegrain_tf")
class HeadTailAccuracy(_ConfusionCounts):
    """Example-level top-1 accuracy restricted to head (train count >= threshold) or tail classes."""

    def __init__(self, train_class_counts, threshold: int = 100, group: str = "tail", name: str | None = None,
                 dtype=None):
        counts = [int(c) for c in np.asarray(train_class_counts).reshape(-1).tolist()]
        if not counts or min(counts) < 0:
            raise ValueError(f"train_class_counts must be non-empty and >= 0, got {train_class_counts!r}")
        if group not in ("head", "tail"):
            raise ValueError(f"group must be 'head' or 'tail', got {group!r}")
        super().__init__(len(counts), name=name or f"{group}_accuracy", dtype=dtype)
        self.train_class_counts = counts
        self.threshold = int(threshold)
        self.group = group
        head = np.asarray(counts) >= self.threshold
        self._mask = (head if group == "head" else ~head).astype(np.float32)

    def result(self):
        mask = tf.constant(self._mask)
        return tf.math.divide_no_nan(tf.reduce_sum(self.correct * mask), tf.reduce_sum(self.total * mask))

    def get_config(self):
        return {"train_class_counts": list(self.train_class_counts), "threshold": self.threshold,
                "group": self.group, "name": self.name}
