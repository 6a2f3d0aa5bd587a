"""Builds the model and the per-example loss of an experiment config."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf import losses
from finegrain_tf.models.heads import build_classifier, classifier_kwargs_from_config
from finegrain_tf.train.config import ExperimentConfig

def build_model(cfg: ExperimentConfig, num_classes: int) -> keras.Model:
    return build_classifier(cfg.model.backbone, num_classes=num_classes,
                            input_size=cfg.data.image_size,
                            **classifier_kwargs_from_config(cfg.model))


def _softmax_loss(num_classes: int, label_smoothing: float):
    cross_entropy = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def loss(labels, logits):
        return cross_entropy(tf.one_hot(tf.cast(labels, tf.int32), num_classes), logits)

    return loss


def build_loss(cfg: ExperimentConfig, class_counts: np.ndarray):
    """The per-example classification loss of `cfg.loss` (a callable (labels, logits) -> [B]).

    `class_counts` are the train images per class over the whole split. LDAM's returned loss has
    `set_step(step)`, which the training loop calls to switch on deferred re-weighting.
    """
    num_classes = len(class_counts)
    loss = cfg.loss
    counts = [int(c) for c in class_counts]
    if loss.name == "softmax":
        return _softmax_loss(num_classes, loss.label_smoothing)
    if loss.label_smoothing:
        raise ValueError(f"loss.label_smoothing={loss.label_smoothing} is only supported with "
                         f"loss.name='softmax', not {loss.name!r}")
    if loss.name == "class_balanced":
        return losses.ClassBalancedLoss(counts, beta=loss.beta, loss_type=loss.loss_type,
                                        gamma=loss.gamma, reduction=None)
    if loss.name == "logit_adjusted":
        return losses.LogitAdjustedLoss(counts, tau=loss.tau, reduction=None)
    if loss.name == "balanced_softmax":
        return losses.BalancedSoftmaxLoss(counts, reduction=None)
    if loss.name == "ldam":
        return losses.LDAMLoss(counts, max_margin=loss.max_margin, scale=loss.scale,
                               beta=loss.beta, drw_step=loss.drw_step, reduction=None)
    raise ValueError(f"loss.name={loss.name!r} is not available in the training binary")


def build_triplet_loss(cfg: ExperimentConfig):
    """The in-batch triplet term of eq 2.5 on the L2-normalised embedding (None if omega = 0)."""
    if cfg.loss.triplet_weight <= 0:
        return None
    return losses.TripletLoss(cfg.loss.margin, cfg.loss.mining, cfg.loss.distance,
                              gather_across_replicas=True, reduction=None)
