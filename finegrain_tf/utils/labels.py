"""Label normalisation: one place that turns what users pass as labels into int64 class ids.

* `to_int_labels`: numpy/list/tf.Tensor labels -> int64 [N]. Accepts int ids, integer-valued floats
  (Keras casts y_true to float), a [N, 1] column, and one-hot or score matrices [N, C] (arg-maxed).
* `int_labels_tensor`: the graph-safe version for losses and layers (float labels rounded).
* `labels_from_dataset`: every label of a `tf.data.Dataset` in iteration order (batched or not;
  elements `y`, `(x, y)`, `(x, y, w)` or dicts with a label key), with a progress bar.
* `count_labels`: examples per class over a whole label array or dataset (for class-balanced weights,
  whose counts must come from the whole training set, never from a batch).

All raise ValueError naming the offending value: non-integers, non-finite values, labels outside
[0, num_classes), a one-hot width that disagrees with num_classes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from finegrain_tf.utils.checks import positive_int
from finegrain_tf.utils.progress import ProgressBar


def to_int_labels(labels, num_classes: Optional[int] = None, *, name: str = "labels",
                  flatten: bool = False) -> np.ndarray:
    """Int64 class ids [N] from ids, integer-valued floats, a [N, 1] column or one-hot / scores [N, C].

    Args:
      labels: array-like, list or tf.Tensor.
      num_classes: when given, a 2-D input must have exactly this many columns (else ValueError naming
        both widths) and every id must lie in [0, num_classes).
      name: what the error messages call the argument (e.g. "y_true").
      flatten: accept any shape of ids and flatten it (e.g. [B, T] label grids); otherwise more than
        one dimension (after reducing one-hot) is an error.
    """
    if num_classes is not None:
        num_classes = positive_int(num_classes, "num_classes")
    if isinstance(labels, (tf.Tensor, tf.Variable)):
        labels = labels.numpy()
    arr = np.asarray(labels)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ValueError(f"{name} must be integer class ids, got dtype {arr.dtype} (e.g. {arr.flat[0]!r})"
                         if arr.size else f"{name} must be integer class ids, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1 and num_classes != 1:
        arr = arr[:, 0]
    elif arr.ndim == 2 and not flatten:
        if num_classes is not None and arr.shape[1] != num_classes:
            raise ValueError(f"{name} is one-hot/scores of width {arr.shape[1]} but num_classes={num_classes}")
        if arr.size and not np.all(np.isfinite(arr.astype(np.float64))):
            raise ValueError(f"{name} one-hot/scores contain a non-finite value")
        arr = arr.argmax(-1)
    elif arr.ndim >= 2 and flatten and num_classes is not None and num_classes > 1 \
            and arr.shape[-1] == num_classes and arr.dtype.kind == "f":
        arr = arr.argmax(-1)  # one-hot rows of a flattened grid
    if arr.ndim != 1:
        if not flatten:
            raise ValueError(f"{name} must be class ids [N] or one-hot/scores [N, C], got shape {arr.shape}")
        arr = arr.reshape(-1)
    if arr.size and arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(f"{name} must be integer class ids, got {arr[bad][0].item()!r}")
    arr = arr.astype(np.int64)
    if arr.size:
        upper = num_classes if num_classes is not None else None
        bad = arr[(arr < 0) | ((arr >= upper) if upper is not None else False)]
        if bad.size:
            where = f"[0, {upper})" if upper is not None else ">= 0"
            raise ValueError(f"{name} contains {int(bad[0])}, outside {where}")
    return arr


def int_labels_tensor(labels) -> tf.Tensor:
    """Graph-safe int64 [B] ids from int or float labels of any shape (Keras passes y_true as float)."""
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        labels = tf.round(labels)
    return tf.reshape(tf.cast(labels, tf.int64), [-1])


def _element_label(element, label_key: str):
    """The label of one dataset element: `y`, `(x, y)`, `(x, y, w)` or `{label_key: y, ...}`."""
    if isinstance(element, dict):
        if label_key not in element:
            raise ValueError(f"dataset elements are dicts without the key {label_key!r}: {sorted(element)}")
        return element[label_key]
    if isinstance(element, (tuple, list)):
        if len(element) < 2:
            raise ValueError(f"expected (x, y) dataset elements, got a tuple of {len(element)}")
        y = element[1]
        return _element_label(y, label_key) if isinstance(y, dict) else y
    return element


def labels_from_dataset(dataset: tf.data.Dataset, num_classes: Optional[int] = None, progress: bool = True,
                        label_key: str = "label") -> np.ndarray:
    """All labels of a (batched or unbatched) dataset in iteration order, as int64 [N].

    Only the labels are mapped out of the elements (images are still produced by the pipeline, but
    not copied to numpy). One-hot labels of width `num_classes` are arg-maxed.
    """
    label_ds = dataset.map(lambda *e: _element_label(e[0] if len(e) == 1 else e, label_key),
                           num_parallel_calls=tf.data.AUTOTUNE)
    cardinality = int(label_ds.cardinality().numpy())
    chunks = []
    with ProgressBar(total=cardinality if cardinality >= 0 else None, desc="labels", unit="batch",
                     enabled=progress) as bar:
        for y in label_ds.as_numpy_iterator():
            y = np.asarray(y)
            if num_classes and num_classes > 1 and y.ndim >= 1 and y.shape[-1] == num_classes \
                    and y.dtype.kind == "f":
                y = y.argmax(-1)
            chunks.append(y.reshape(-1))
            bar.update(1)
    if not chunks:
        return np.zeros([0], np.int64)
    return to_int_labels(np.concatenate(chunks), num_classes, name="dataset labels")


def count_labels(labels_or_dataset, num_classes: int, progress: bool = True,
                 label_key: str = "label") -> np.ndarray:
    """Examples per class (int64 [num_classes]) over a whole label array or `tf.data.Dataset`.

    Arrays: ids of any shape, or one-hot [N, C] (see `to_int_labels`). Datasets: see
    `labels_from_dataset`. Labels outside [0, num_classes) raise ValueError naming the value.
    """
    num_classes = positive_int(num_classes, "num_classes")
    if isinstance(labels_or_dataset, tf.data.Dataset):
        labels = labels_from_dataset(labels_or_dataset, num_classes, progress=progress, label_key=label_key)
    else:
        arr = labels_or_dataset.numpy() if isinstance(labels_or_dataset, (tf.Tensor, tf.Variable)) \
            else np.asarray(labels_or_dataset)
        # [N, C] is one-hot when float, or 0/1 ints with one 1 per row; otherwise a grid of ids.
        one_hot = arr.ndim == 2 and arr.shape[1] == num_classes and num_classes > 1 and (
            arr.dtype.kind == "f" or (np.isin(arr, (0, 1)).all() and (arr.sum(-1) == 1).all()))
        labels = to_int_labels(arr, num_classes, flatten=not one_hot)
    return np.bincount(labels, minlength=num_classes).astype(np.int64)
