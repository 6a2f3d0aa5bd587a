"""Feature extraction for the analyses of seed 000 §4.3 (g(s), eq. 4.1) and chapter 6.

* :func:`extract_features` runs any Keras model or layer over a batched ``tf.data`` dataset of
  ``(images, labels)`` with a progress bar (total and ETA) and returns all features (for granularity, which needs
  per-sample features).
* :func:`class_means` streams the same pass into per-class feature sums and counts (for domain
  similarity, which needs only the class means g(s_i) and image counts), so nothing but a [C, D]
  accumulator is held in memory.
* .npz save/load helpers for both.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from absl import logging

from finegrain_tf.utils import checks
from finegrain_tf.utils.progress import ProgressBar


def feature_model(model, layer_name: str = "embedding"):
    """A Keras model from ``model``'s input to the output of layer ``layer_name``.

    The training binary's ``model.keras`` names its penultimate embedding layer "embedding".
    """
    import keras

    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(f"model has no layer named {layer_name!r}; layers: {names}") from None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, layer.output, name=f"{model.name}_{layer_name}")


def _split_element(element):
    if isinstance(element, dict):
        for key in ("image", "images"):
            if key in element:
                images = element[key]
                break
        else:
            raise ValueError(f"dict dataset elements need an 'image' key, got {sorted(element)}")
        if "label" not in element:
            raise ValueError(f"dict dataset elements need a 'label' key, got {sorted(element)}")
        return images, element["label"]
    if isinstance(element, (tuple, list)) and len(element) >= 2:
        return element[0], element[1]
    raise ValueError("dataset elements must be (images, labels) tuples or dicts with image/label, got "
                     f"{type(element).__name__}")


def _iterate(model_or_layer, dataset, max_batches: Optional[int], progress: bool, desc: str,
             total: Optional[int] = None):
    """Yields (features [B, F] float32 numpy, labels [B] int64 numpy) per batch."""
    import tensorflow as tf

    if max_batches is not None:
        checks.positive_int(max_batches, "max_batches")
    if not callable(model_or_layer):
        raise ValueError(f"model_or_layer must be a callable Keras model or layer, got {model_or_layer!r}")
    if total is None and isinstance(dataset, tf.data.Dataset):
        card = int(dataset.cardinality())
        total = card if card >= 0 else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    with ProgressBar(total=total, desc=desc, unit="batch", enabled=progress) as bar:
        for step, element in enumerate(dataset):
            if max_batches is not None and step >= max_batches:
                break
            images, labels = _split_element(element)
            if len(getattr(images, "shape", ())) < 2:
                raise ValueError(f"images must be batched, got shape {tuple(images.shape)}; call "
                                 "dataset.batch(...) first")
            out = model_or_layer(images, training=False)
            feats = np.asarray(tf.cast(out, tf.float32))
            feats = feats.reshape(feats.shape[0], -1)
            lab = np.asarray(labels).astype(np.int64).reshape(-1)
            if lab.shape[0] != feats.shape[0]:
                raise ValueError(f"batch has {feats.shape[0]} features but {lab.shape[0]} labels")
            bar.update(1)
            yield feats, lab


def extract_features(model_or_layer, dataset, *, max_batches: Optional[int] = None,
                     progress: bool = True, total: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of every image: ([N, F] float32 (model outputs flattened), [N] int64 labels).

    Args:
      model_or_layer: any Keras model/layer (or callable) mapping an image batch to features;
        see :func:`feature_model` to cut a trained classifier at its "embedding" layer.
      dataset: batched iterable of (images, labels) (a ``tf.data.Dataset`` gets a sized progress bar).
      max_batches: stop after this many batches.
      progress: show a progress bar (`finegrain_tf.utils.progress`: count, total and ETA).
      total: number of batches, when the dataset cannot tell (e.g. after `ignore_errors`).
    """
    feats, labs = [], []
    for f, lab in _iterate(model_or_layer, dataset, max_batches, progress, "features", total):
        feats.append(f)
        labs.append(lab)
    if not feats:
        raise ValueError("the dataset yielded no batches")
    return np.concatenate(feats), np.concatenate(labs)


class ClassMeanAccumulator:
    """Streaming per-class feature sums (float64) and counts."""

    def __init__(self, num_classes: Optional[int] = None):
        self.num_classes = None if num_classes is None else checks.positive_int(num_classes, "num_classes")
        self.sums: Optional[np.ndarray] = None
        self.counts: Optional[np.ndarray] = None

    def update(self, features, labels) -> None:
        f = np.asarray(features, dtype=np.float64)
        f = f.reshape(f.shape[0], -1)
        y = np.asarray(labels).astype(np.int64).reshape(-1)
        if y.shape[0] != f.shape[0]:
            raise ValueError(f"{f.shape[0]} features but {y.shape[0]} labels")
        if y.size and y.min() < 0:
            raise ValueError(f"labels must be non-negative class ids, got {int(y.min())}")
        if self.num_classes is not None and y.size and y.max() >= self.num_classes:
            raise ValueError(f"label {int(y.max())} out of range for num_classes={self.num_classes}")
        need = self.num_classes or (int(y.max()) + 1 if y.size else 0)
        if self.sums is None:
            self.sums = np.zeros((need, f.shape[1]))
            self.counts = np.zeros(need, dtype=np.int64)
        elif f.shape[1] != self.sums.shape[1]:
            raise ValueError(f"feature dimension changed from {self.sums.shape[1]} to {f.shape[1]}")
        if need > self.sums.shape[0]:
            grow = need - self.sums.shape[0]
            self.sums = np.vstack([self.sums, np.zeros((grow, self.sums.shape[1]))])
            self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int64)])
        np.add.at(self.sums, y, f)
        self.counts += np.bincount(y, minlength=self.counts.size)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(means [C, F] float64 (zeros for classes without images), counts [C] int64)."""
        if self.sums is None:
            raise ValueError("no features were accumulated")
        means = np.divide(self.sums, np.maximum(self.counts, 1)[:, None])
        return means, self.counts.copy()


def class_means(model_or_layer, dataset, *, num_classes: Optional[int] = None,
                max_batches: Optional[int] = None, progress: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """Class-mean features g(s_i) and image counts of a domain (seed 000 §4.3.1), streamed.

    Returns:
      (means [C, F] float64, counts [C] int64); C = num_classes or max label + 1.
    """
    acc = ClassMeanAccumulator(num_classes)
    for f, lab in _iterate(model_or_layer, dataset, max_batches, progress, "class means"):
        acc.update(f, lab)
    return acc.result()


def _write_npz(path: str, arrays: dict[str, Any]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    logging.info("wrote %s (%s)", path, ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in arrays.items()))
    return path


def _save_rows(path: str, matrix: tuple[str, Any], vector: tuple[str, Any], rows: str,
               class_names: Optional[Sequence[str]], names_per_row: bool) -> str:
    """Checks and writes a (key, [R, F] array) and a (key, [R] array) pair plus optional class names.

    `rows` names R in the error message ("N" samples, "C" classes); with `names_per_row` there must be
    exactly one class name per row (a class-means file), otherwise any list of names is kept as given.
    """
    (matrix_key, m), (vector_key, v) = matrix, vector
    m, v = np.asarray(m), np.asarray(v)
    if m.ndim != 2 or v.shape != (m.shape[0],):
        raise ValueError(f"{matrix_key} [{rows}, F] and {vector_key} [{rows}] expected, got {m.shape} and {v.shape}")
    arrays = {matrix_key: m, vector_key: v}
    if class_names is not None:
        names = list(class_names)
        if names_per_row and len(names) != m.shape[0]:
            raise ValueError(f"{len(names)} class names for {m.shape[0]} classes")
        arrays["class_names"] = np.asarray(names, dtype=str)
    return _write_npz(path, arrays)


def save_features(path: str, features, labels, class_names: Optional[Sequence[str]] = None) -> str:
    """Saves per-sample features and labels (and optional class names) as .npz."""
    return _save_rows(path, ("features", features), ("labels", labels), "N", class_names, names_per_row=False)


def load_features(path: str) -> dict[str, np.ndarray]:
    """{'features', 'labels'[, 'class_names']} from :func:`save_features`."""
    with np.load(path, allow_pickle=False) as z:
        if "features" not in z or "labels" not in z:
            raise ValueError(f"{path} is not a features file (keys {sorted(z.files)})")
        return {k: z[k] for k in z.files}


def save_class_means(path: str, means, counts, class_names: Optional[Sequence[str]] = None) -> str:
    """Saves a domain (class means [C, F], counts [C], optional class names) as .npz."""
    return _save_rows(path, ("means", means), ("counts", counts), "C", class_names, names_per_row=True)


def load_class_means(path: str) -> tuple[np.ndarray, np.ndarray, Optional[list[str]]]:
    """(means, counts, class_names or None) from :func:`save_class_means`."""
    with np.load(path, allow_pickle=False) as z:
        if "means" not in z or "counts" not in z:
            raise ValueError(f"{path} is not a class-means file (keys {sorted(z.files)})")
        names = z["class_names"].tolist() if "class_names" in z else None
        return z["means"], z["counts"], names


def class_means_from_features(features, labels, num_classes: Optional[int] = None):
    """(means, counts) of already-extracted features (same result as :func:`class_means`)."""
    acc = ClassMeanAccumulator(num_classes)
    acc.update(features, labels)
    return acc.result()


__all__: Iterable[str] = (
    "feature_model", "extract_features", "class_means", "ClassMeanAccumulator",
    "class_means_from_features", "save_features", "load_features", "save_class_means",
    "load_class_means")
