"""Builds the model and the per-example loss of an experiment config."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf.models.heads import build_classifier
from finegrain_tf.train.config import ExperimentConfig

# loss(labels int [B], logits [B, C]) -> per-example loss [B]
PerExampleLoss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def build_model(cfg: ExperimentConfig, num_classes: int) -> keras.Model:
    m = cfg.model
    return build_classifier(m.backbone, pooling=m.pooling, num_classes=num_classes,
                            input_size=cfg.data.image_size, weights=m.weights or None,
                            embedding_dim=m.embedding_dim, dropout=m.dropout,
                            bias_init=m.bias_init)


def _softmax_loss(num_classes: int, label_smoothing: float) -> PerExampleLoss:
    cross_entropy = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def loss(labels, logits):
        return cross_entropy(tf.one_hot(tf.cast(labels, tf.int32), num_classes), logits)

    return loss


def build_loss(cfg: ExperimentConfig, class_counts: np.ndarray) -> PerExampleLoss:
    """The per-example loss of `cfg.loss`; `class_counts` are train images per class (whole split)."""
    num_classes = len(class_counts)
    name = cfg.loss.name
    if name == "softmax":
        return _softmax_loss(num_classes, cfg.loss.label_smoothing)
    raise ValueError(f"loss.name={name!r} is not available in the training binary")
