"""Classifier heads: backbone -> pooling -> (embedding) -> logits.

The classifier contract (relied on by export and serving): input float32 [None, S, S, 3] in [0, 255],
output logits [None, C], and a layer named "embedding" whose output is the penultimate embedding.

Poolings (Table 3.1 of seed 000): "avg" (global average), "bilinear" (full c^2 bilinear),
"compact_bilinear" (Tensor Sketch) and "kernel" (kernel pooling, Algorithm 1). The seed's training
practice (§3.3.1) is available as options:
  * `flip_test=True`: at inference the image and its horizontal flip go through the network and the
    classification scores are averaged. Implemented by two registered layers around the backbone
    (stock ops only, so it survives `.keras` reload and SavedModel export): the batch is doubled
    with the flipped images before the backbone and the pooled features of the two halves are
    averaged right after pooling. Everything after pooling is affine at inference (Dense
    embedding, dropout = identity, Dense logits), so this equals averaging the logits, and the
    "embedding" output is the flip-averaged embedding. In training the layers are identities.
  * `init_classifier_by_logistic_regression`: the classifier initialised by a logistic regression
    on pooled features of the frozen backbone (after estimating kernel pooling's gamma, §3.3.2).
  * gradient clipping to [-1, 1] is an optimizer option (`optimizer.clip_value`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.layers.kernel_pooling import (BilinearPooling, CompactBilinearPooling,
                                                KernelPooling, kernel_pooling_layers)
from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote, kmeans_anchors
from finegrain_tf.layers.flip import FlipTestAugment, FlipTestAverage
from finegrain_tf.layers.normalization import L2Normalize
from finegrain_tf.models.backbones import get_backbone
from finegrain_tf.models.initializers import PriorBias

POOLINGS = ("avg", "bilinear", "compact_bilinear", "kernel")
HEADS = ("linear", "anchor_vote")


# --------------------------------------------------------------------------------------------------
# Flip-averaged inference (seed 000 §3.3.1)


# --------------------------------------------------------------------------------------------------
# Pooling layers


def parse_coefficients(coefficients: Any):
    """"learned" | "rbf" | "a0,a1,...,ap" (config form) | list -> KernelPooling's `coefficients`."""
    if isinstance(coefficients, str) and coefficients not in ("learned", "rbf"):
        try:
            return [float(v) for v in coefficients.split(",")]
        except ValueError:
            raise ValueError(f"kernel coefficients must be 'learned', 'rbf' or comma-separated "
                             f"floats, got {coefficients!r}") from None
    return coefficients


def make_pooling(pooling: str, compact_dim: int = 8192, kernel_order: int = 4, kernel_dims=4096,
                 kernel_coefficients="learned", kernel_gamma: float | None = None,
                 kernel_normalize: bool = True, pooling_seed: int = 0,
                 name: str = "pool") -> keras.layers.Layer:
    """The pooling layer of `build_classifier` ([B, h, w, c] -> [B, D])."""
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if pooling == "bilinear":
        return BilinearPooling(name=name)
    if pooling == "compact_bilinear":
        return CompactBilinearPooling(dim=compact_dim, seed=pooling_seed, name=name)
    if pooling == "kernel":
        gamma = kernel_gamma if kernel_gamma else None  # 0 / None: estimate (adapt) later
        return KernelPooling(order=kernel_order, dims=kernel_dims,
                             coefficients=parse_coefficients(kernel_coefficients), gamma=gamma,
                             normalize=kernel_normalize, seed=pooling_seed, name=name)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")


def build_classifier(backbone, pooling: str = "avg", num_classes: int = 10, input_size: int = 224,
                     weights: str | None = None, embedding_dim: int = 0, dropout: float = 0.0,
                     bias_init: str = "zeros", name: str = "classifier", *,
                     compact_dim: int = 8192, kernel_order: int = 4, kernel_dims=4096,
                     kernel_coefficients="learned", kernel_gamma: float | None = None,
                     kernel_normalize: bool = True, pooling_seed: int = 0,
                     flip_test: bool = False, head: str = "linear", anchors_per_class: int = 3,
                     anchor_gamma: float = 5.0) -> keras.Model:
    """Builds the classifier of the contract above.

    Args:
      backbone: a name for `get_backbone` or a Keras model producing a feature map [B, h, w, c].
      pooling: one of `POOLINGS`.
      num_classes: C.
      input_size: S (448 is the seed's size for fine-grained datasets).
      weights: backbone weights when `backbone` is a name (None, "imagenet" or a file).
      embedding_dim: > 0 adds a Dense projection (the "embedding" layer); else the pooled feature is
        the embedding.
      dropout: dropout rate before the classifier.
      bias_init: "zeros" or "prior" (`PriorBias`: b = -log((1 - pi) / pi), pi = 1 / C, §5.4.2).
      compact_dim: output size of "compact_bilinear".
      kernel_order, kernel_dims, kernel_coefficients, kernel_gamma, kernel_normalize: `KernelPooling`'s
        order, dims, coefficients ("learned", "rbf", a list or "a0,...,ap"), gamma (None or 0 =
        estimate later, see `init_classifier_by_logistic_regression` / `KernelPooling.adapt`) and
        normalize.
      pooling_seed: hash seed of the sketching poolings.
      flip_test: average the scores over the image and its horizontal flip at inference.
      head: "linear" (Dense logits) or "anchor_vote" (`AnchorSoftVote` over `anchors_per_class`
        anchors per class with softness `anchor_gamma` on the L2-normalised embedding, §2.3.4;
        initialise the anchors with `init_anchors_by_kmeans`).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if bias_init not in ("zeros", "prior"):
        raise ValueError(f"bias_init must be 'zeros' or 'prior', got {bias_init!r}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    if head == "anchor_vote" and bias_init != "zeros":
        raise ValueError(f"bias_init={bias_init!r} needs a linear head; the anchor_vote head has no bias")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    if isinstance(backbone, str):
        backbone = get_backbone(backbone, input_size, weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = FlipTestAugment(name="flip_augment")(inputs) if flip_test else inputs
    features = backbone(x)
    pooled = make_pooling(pooling, compact_dim=compact_dim, kernel_order=kernel_order,
                          kernel_dims=kernel_dims, kernel_coefficients=kernel_coefficients,
                          kernel_gamma=kernel_gamma, kernel_normalize=kernel_normalize,
                          pooling_seed=pooling_seed)(features)
    if flip_test:
        pooled = FlipTestAverage(name="flip_average")(pooled)
    if embedding_dim > 0:
        embedding = keras.layers.Dense(embedding_dim, name="embedding")(pooled)
    else:
        embedding = keras.layers.Identity(name="embedding")(pooled)
    x = keras.layers.Dropout(dropout, name="dropout")(embedding) if dropout > 0 else embedding
    if head == "anchor_vote":
        # Eq 2.3 as logits s_i = logsumexp_j(-gamma ||f(x) - u_ij||^2) on the L2-normalised
        # embedding: softmax(s) = p of eq 2.3 and cross-entropy on s = eq 2.4.
        unit = L2Normalize(name="embedding_l2")(x)
        logits = AnchorSoftVote(num_classes, anchors_per_class, anchor_gamma, output_mode="logits",
                                dtype="float32", name="logits")(unit)
    else:
        bias = PriorBias(num_classes) if bias_init == "prior" else "zeros"
        logits = keras.layers.Dense(num_classes, bias_initializer=bias, dtype="float32",
                                    name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def classifier_kwargs_from_config(model_cfg) -> dict:
    """`build_classifier` keyword arguments from a `finegrain_tf.train.config.ModelConfig`.

    Use: build_classifier(cfg.model.backbone, num_classes=C, input_size=cfg.data.image_size,
                          **classifier_kwargs_from_config(cfg.model))
    """
    kp = model_cfg.kernel_pooling
    return dict(pooling=model_cfg.pooling, weights=model_cfg.weights or None,
                embedding_dim=model_cfg.embedding_dim, dropout=model_cfg.dropout,
                bias_init=model_cfg.bias_init, compact_dim=model_cfg.compact_dim,
                kernel_order=kp.order, kernel_dims=kp.dims,
                kernel_coefficients=parse_coefficients(kp.coefficients),
                kernel_gamma=kp.gamma or None, kernel_normalize=kp.normalize,
                flip_test=model_cfg.flip_test, head=model_cfg.head,
                anchors_per_class=model_cfg.anchors_per_class, anchor_gamma=model_cfg.anchor_gamma)


# --------------------------------------------------------------------------------------------------
# Classifier initialisation by logistic regression (seed 000 §3.3.1)


def _batches(dataset, steps):
    for i, batch in enumerate(dataset):
        if steps is not None and i >= steps:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("dataset must yield (images, labels) batches")
        yield batch[0], batch[1]


def adapt_kernel_pooling_gamma(model: keras.Model, dataset, steps: int | None = None,
                               force: bool = False) -> dict:
    """gamma = 1 / mean <x, y> (§3.3.2) for every `KernelPooling` of `model` without a gamma yet
    (built with gamma=None and not adapted before; a reloaded model keeps its adapted gamma).

    The feature maps feeding each layer are computed in inference mode (frozen backbone) from the
    (images, labels) batches of `dataset` (`steps` limits them); `KernelPooling.adapt` stores gamma
    in the layer's "gamma" weight and re-initialises learned coefficients (eq 3.11). `force=True`
    also re-estimates layers that have a gamma. Returns {layer name: gamma} of the layers adapted.
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
                                           C: float = 1.0, max_iter: int = 300,
                                           adapt_gamma: bool = True) -> dict:
    """Initialises the "logits" layer by a logistic regression on pooled features (§3.3.1).

    The backbone is run frozen (inference mode). First (`adapt_gamma`), every `KernelPooling` layer
    whose gamma was not given (gamma=None) gets gamma = 1 / mean <x, y> estimated on its input
    feature maps (§3.3.2, `adapt_kernel_pooling_gamma`), which also re-initialises its
    coefficients (eq 3.11). Then the features feeding the
    "logits" layer are extracted for the whole `dataset` (batches of (float32 images [B, S, S, 3]
    in [0, 255], int labels [B]); `steps` limits the number of batches) and a multinomial
    logistic regression (scikit-learn, L2 strength 1 / C) is fitted; its weights and intercepts
    become the kernel and bias of "logits". Classes absent from the data get zero weights and a
    bias below every fitted intercept.

    Returns {"gamma": {layer name: gamma}, "train_accuracy": accuracy of the fit, "num_examples": N}.
    """
    from sklearn.linear_model import LogisticRegression

    logits_layer = model.get_layer("logits")
    gammas = adapt_kernel_pooling_gamma(model, dataset, steps) if adapt_gamma else {}
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
    return {"gamma": gammas, "train_accuracy": accuracy, "num_examples": int(len(labels))}


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
