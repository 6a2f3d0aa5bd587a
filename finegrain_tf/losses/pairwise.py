"""Contrastive loss for Siamese pairs (seed 004 §3.2 eq 3.2.2 / §4.1.5 eq 4.1.3; Hadsell et al. 2006).

y_true: [B] in {0, 1} (1 = similar pair); y_pred: [B, 2, D], the two embeddings of each pair.

- ``formulation="hadsell"``: y * d^2 + (1 - y) * max(m - d, 0)^2 with d the Euclidean distance; its
  mean equals tensorflow-addons' ``contrastive_loss`` mean fed with d = ||a - b||.
- ``formulation="thesis"``: eq 4.1.3 of seed 004, 1/2 * y * S + 1/2 * (1 - y) * max(0, m - S) with
  S = ||a - b||^2 the squared distance of eq 3.2.1.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from finegrain_tf.losses.metric import safe_sqrt

FORMULATIONS = ("hadsell", "thesis")


def contrastive_loss(y_true, y_pred, margin: float = 1.0, formulation: str = "hadsell") -> tf.Tensor:
    """Per-pair contrastive loss [B] for y_pred [B, 2, D]."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is not one of {list(FORMULATIONS)}")
    x = tf.cast(y_pred, tf.float32)
    if x.shape.rank is not None and x.shape.rank != 3:
        raise ValueError(f"y_pred must have shape [B, 2, D], got rank {x.shape.rank} ({x.shape})")
    y = tf.cast(tf.reshape(y_true, [-1]), tf.float32)
    sq = tf.reduce_sum(tf.square(x[:, 0] - x[:, 1]), axis=-1)
    margin = tf.cast(margin, tf.float32)
    if formulation == "hadsell":
        d = safe_sqrt(sq)
        return y * sq + (1.0 - y) * tf.square(tf.nn.relu(margin - d))
    return 0.5 * y * sq + 0.5 * (1.0 - y) * tf.nn.relu(margin - sq)


@keras.saving.register_keras_serializable(package="finegrain_tf")
class ContrastiveLoss(keras.losses.Loss):
    """Contrastive loss on (pair labels [B], pair embeddings [B, 2, D]); see the module docstring."""

    def __init__(self, margin: float = 1.0, formulation: str = "hadsell", name: str = "contrastive_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation={formulation!r} is not one of {list(FORMULATIONS)}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)
        self.formulation = formulation

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin, self.formulation)

    def get_config(self):
        return {"margin": self.margin, "formulation": self.formulation, "name": self.name,
                "reduction": self.reduction}
