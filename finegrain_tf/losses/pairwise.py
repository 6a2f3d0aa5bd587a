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

from finegrain_tf.losses.metric import check_margin_loss_args, safe_sqrt
from finegrain_tf.ops.xla import in_xla_context

FORMULATIONS = ("hadsell", "thesis")


def _pair_labels(y_true):
    """Float {0, 1} pair labels [B]; anything else is refused (a label of 2 or -1 would silently give
    a wrong or negative loss): ValueError eagerly, an assertion in a graph, NaN under XLA."""
    y = tf.cast(tf.reshape(y_true, [-1]), tf.float32)
    binary = tf.logical_or(tf.equal(y, 0.0), tf.equal(y, 1.0))
    if tf.executing_eagerly():
        bad = y.numpy()[~binary.numpy()]
        if bad.size:
            raise ValueError(f"pair labels must be 0 (dissimilar) or 1 (similar), got {float(bad[0])!r}")
        return y
    if in_xla_context():
        return tf.where(binary, y, tf.constant(float("nan"), y.dtype))
    check = tf.debugging.Assert(tf.reduce_all(binary),
                                ["pair labels must be 0 (dissimilar) or 1 (similar), got", y], summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(y)


def contrastive_loss(y_true, y_pred, margin: float = 1.0, formulation: str = "hadsell") -> tf.Tensor:
    """Per-pair contrastive loss [B] for y_pred [B, 2, D]."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is not one of {list(FORMULATIONS)}")
    x = tf.cast(y_pred, tf.float32)
    if x.shape.rank is not None and (x.shape.rank != 3 or x.shape[1] not in (2, None)):
        raise ValueError(f"y_pred must have shape [B, 2, D] (the two embeddings of each pair), got "
                         f"rank {x.shape.rank} shape {tuple(x.shape)}")
    y = _pair_labels(y_true)
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
        self.margin = check_margin_loss_args(margin, formulation=(formulation, FORMULATIONS))
        self.formulation = formulation
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin, self.formulation)

    def get_config(self):
        return {"margin": self.margin, "formulation": self.formulation, "name": self.name,
                "reduction": self.reduction}
