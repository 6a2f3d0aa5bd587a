"""Data-dependent initialisation of a classifier before training (fresh runs only).

* `adapt_kernel_pooling_gamma`: gamma = 1 / mean <x, y> of the backbone features feeding each
  `KernelPooling` without a gamma yet (seed 000 §3.3.2; re-initialises learned coefficients, eq 3.11).
* `init_classifier_by_logistic_regression`: the "logits" layer from a multinomial logistic regression
  on pooled features of the frozen backbone (§3.3.1).
* `init_anchors_by_kmeans`: the anchors of an "anchor_vote" head by per-class k-means of the
  L2-normalised embeddings (§2.3.4).

Every function runs the network in inference mode on (images, labels) batches of a dataset; `steps`
limits the number of batches.
"""

from __future__ import annotations

import keras
import numpy as np
from absl import logging

from finegrain_tf.layers import AnchorSoftVote, KernelPooling, kmeans_anchors


def _batches(dataset, steps):
    for i, batch in enumerate(dataset):
        if steps is not None and i >= steps:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("dataset must yield (images, labels) batches")
        yield batch[0], batch[1]


def kernel_pooling_layers(model: keras.Model) -> list:
    """Every `KernelPooling` layer of `model`, nested models included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, KernelPooling)]


def adapt_kernel_pooling_gamma(model: keras.Model, dataset, steps: int | None = None,
                               force: bool = False) -> dict:
    """gamma = 1 / mean <x, y> (§3.3.2) for every `KernelPooling` of `model` without a gamma yet
    (built with gamma=None and not adapted before; a reloaded model keeps its adapted gamma).

    `force=True` also re-estimates layers that have a gamma. Returns {layer name: gamma} of the
    layers adapted.
    """
    gammas = {}
    for layer in kernel_pooling_layers(model):
        if layer.has_gamma and not force:
            continue
        extractor = keras.Model(model.inputs, layer.input)
        gammas[layer.name] = layer.adapt(
            extractor.predict_on_batch(images) for images, _ in _batches(dataset, steps))
        logging.info("kernel pooling %s: gamma = %.6g", layer.name, gammas[layer.name])
    return gammas


def _features_and_labels(model: keras.Model, output, dataset, steps):
    """float64 features of the graph tensor `output` of `model` (inference mode) and int labels."""
    extractor = keras.Model(model.inputs, output)
    feats, labels = [], []
    for images, y in _batches(dataset, steps):
        feats.append(np.asarray(extractor.predict_on_batch(images), np.float64))
        labels.append(np.asarray(y).reshape(-1).astype(np.int64))
    if not feats:
        raise ValueError("dataset yielded no batches")
    return np.concatenate(feats), np.concatenate(labels)


def init_classifier_by_logistic_regression(model: keras.Model, dataset, steps: int | None = None,
                                           C: float = 1.0, max_iter: int = 300) -> dict:
    """Initialises the "logits" layer by a logistic regression on pooled features (§3.3.1).

    The features feeding "logits" are extracted (frozen backbone, inference mode) and a multinomial
    logistic regression (scikit-learn, L2 strength 1 / C) is fitted; its weights and intercepts
    become the kernel and bias of "logits". Classes absent from the data get zero weights and a
    bias below every fitted intercept. Estimate kernel pooling's gamma first
    (`adapt_kernel_pooling_gamma`): adapting re-initialises the pooling's coefficients.

    Returns {"train_accuracy": accuracy of the fit, "num_examples": N}.
    """
    from sklearn.linear_model import LogisticRegression

    logits_layer = model.get_layer("logits")
    feats, labels = _features_and_labels(model, logits_layer.input, dataset, steps)
    num_classes = int(logits_layer.units)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got {present.tolist()}")
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(feats, labels)
    kernel = np.zeros((feats.shape[1], num_classes), np.float32)
    bias = np.zeros((num_classes,), np.float32)
    if len(present) == 2:  # sklearn fits one logit z: softmax([-z/2, z/2]) == sigmoid(z)
        kernel[:, present[0]], kernel[:, present[1]] = -0.5 * clf.coef_[0], 0.5 * clf.coef_[0]
        bias[present[0]], bias[present[1]] = -0.5 * clf.intercept_[0], 0.5 * clf.intercept_[0]
    else:
        kernel[:, present] = clf.coef_.T
        bias[present] = clf.intercept_
    missing = np.setdiff1d(np.arange(num_classes), present)
    if len(missing):
        bias[missing] = bias[present].min() - 10.0
    logits_layer.kernel.assign(kernel)
    logits_layer.bias.assign(bias)
    accuracy = float(np.mean(clf.predict(feats) == labels))
    logging.info("logistic regression init: %d examples, %d features, train accuracy %.3f",
                 len(labels), feats.shape[1], accuracy)
    return {"train_accuracy": accuracy, "num_examples": int(len(labels))}


def init_anchors_by_kmeans(model: keras.Model, dataset, steps: int | None = None,
                           seed: int = 0) -> int:
    """Places the anchors of an "anchor_vote" head by per-class k-means of the L2-normalised
    embeddings of `dataset` (§2.3.4); classes absent from those batches keep their random anchors.
    Returns the number of embeddings used."""
    head = model.get_layer("logits")
    if not isinstance(head, AnchorSoftVote):
        raise ValueError("init_anchors_by_kmeans needs a model built with head='anchor_vote'")
    feats, labels = _features_and_labels(model, model.get_layer("embedding_l2").output, dataset,
                                         steps)
    anchors = np.asarray(keras.ops.convert_to_numpy(head.anchors)).copy()
    present = np.unique(labels)
    remap = np.searchsorted(present, labels)
    anchors[present] = kmeans_anchors(feats, remap, head.anchors_per_class,
                                      num_classes=len(present), seed=seed)
    head.set_anchors(anchors)
    return len(labels)
