"""Builds the model and the loss of an experiment config (the registries the config validates against).

`LOSSES` maps `loss.name` to a builder of the per-example classification loss; `build_objective`
wraps it with eq 2.5's triplet term (`finegrain_tf.losses.CombinedObjective`) when
`loss.triplet_weight` > 0.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf import losses
from finegrain_tf.losses import hard_negative
from finegrain_tf.models.heads import build_classifier, classifier_kwargs_from_config

CB_LOSS_TYPES = ("softmax", "sigmoid", "focal")  # loss.loss_type of ClassBalancedLoss


def num_outputs(cfg, num_classes: int) -> int:
    """Logits of the classifier: C, or C + 1 / 2C for the hard-negative baselines (§2.4.3)."""
    if cfg.loss.name in hard_negative.MODES:
        return hard_negative.num_outputs(num_classes, cfg.loss.name)
    return num_classes


def build_model(cfg, num_classes: int) -> keras.Model:
    """The classifier of `cfg.model` with `num_outputs(cfg, num_classes)` logits."""
    return build_classifier(cfg.model.backbone, num_classes=num_outputs(cfg, num_classes),
                            input_size=cfg.data.image_size,
                            **classifier_kwargs_from_config(cfg.model))


class _SmoothedSoftmax(keras.losses.Loss):
    """Softmax cross-entropy with label smoothing on sparse labels (Keras' sparse loss has none)."""

    def __init__(self, label_smoothing: float):
        super().__init__(name="smoothed_softmax", reduction=None)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        targets = tf.one_hot(labels, tf.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(targets, y_pred, from_logits=True,
                                                     label_smoothing=self.label_smoothing)


def _softmax(loss_cfg, counts):
    if loss_cfg.label_smoothing:
        return _SmoothedSoftmax(loss_cfg.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def _class_balanced(loss_cfg, counts):
    return losses.ClassBalancedLoss(counts, beta=loss_cfg.beta, loss_type=loss_cfg.loss_type,
                                    gamma=loss_cfg.gamma, reduction=None)


def _logit_adjusted(loss_cfg, counts):
    return losses.LogitAdjustedLoss(counts, tau=loss_cfg.tau, reduction=None)


def _balanced_softmax(loss_cfg, counts):
    return losses.BalancedSoftmaxLoss(counts, reduction=None)


def _ldam(loss_cfg, counts):
    return losses.LDAMLoss(counts, max_margin=loss_cfg.max_margin, scale=loss_cfg.scale,
                           beta=loss_cfg.beta, drw_step=loss_cfg.drw_step, reduction=None)


def _hard_negative_softmax(loss_cfg, counts):
    # §2.4.3: a plain softmax over the C real classes plus the hard-negative class(es).
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


# loss.name -> builder(loss_cfg, train class counts) of a per-example loss (labels, logits) -> [B].
LOSSES = {"softmax": _softmax, "class_balanced": _class_balanced,
          "logit_adjusted": _logit_adjusted, "balanced_softmax": _balanced_softmax, "ldam": _ldam,
          "hns": _hard_negative_softmax, "hnm": _hard_negative_softmax}


def build_loss(cfg, class_counts) -> object:
    """The per-example classification loss of `cfg.loss` (a Keras loss (labels, logits) -> [B]).

    `class_counts` are the train images per class over the whole split. LDAM's loss has
    `set_step(step)`, which the task calls before every step to switch on deferred re-weighting.
    """
    return LOSSES[cfg.loss.name](cfg.loss, [int(c) for c in np.asarray(class_counts)])


def build_objective(cfg, class_counts, vote_output: str = "logits"):
    """The loss the classification task trains with: `build_loss`, or eq 2.5's
    `CombinedObjective(omega=loss.triplet_weight)` around it when the triplet term is on (the
    triplet term mines across replicas, so the global batch is mined as on one device)."""
    classification = build_loss(cfg, class_counts)
    if cfg.loss.triplet_weight <= 0:
        return classification
    return losses.CombinedObjective(
        omega=cfg.loss.triplet_weight, margin=cfg.loss.margin, mining=cfg.loss.mining,
        distance=cfg.loss.distance, gather_across_replicas=True, classification=classification,
        vote_output=vote_output, reduction=None)
