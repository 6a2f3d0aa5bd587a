"""Long-tail losses beyond the seed, in the API style of `class_balanced.py`.

* Logit adjustment (Menon et al., ICLR 2021, eq 10): CE(z + tau * log(pi), y), pi_j = n_j / N.
* Balanced Softmax (Ren et al., NeurIPS 2020, eq 4): CE(z + log(n), y) -- the same as logit adjustment
  with tau = 1 (log N is a constant shift that softmax ignores).
* LDAM with deferred re-weighting (Cao et al., NeurIPS 2019, eq 13 + Alg. 1):
  CE(s * (z - m_y * onehot(y)), y), margins m_j = K / n_j^{1/4} with K chosen so that max_j m_j =
  `max_margin`; s = `scale`. LDAM assumes the logits are cosine similarities in [-1, 1] (normalised
  features and classifier weights), as in the paper's code; with unnormalised logits use scale=1.
  DRW: the per-class weights are `class_balanced_weights(counts, 0)` (= all ones) before step
  `drw_step` and `class_balanced_weights(counts, beta)` from that step on (the paper: beta = 0.9999,
  switch at epoch 160 of 200).

How the DRW switch works (both training paths):

* The loss holds a non-trainable `tf.Variable` `drw_active` (0. or 1.) and mixes the two weight vectors
  with it inside the graph, so a compiled `model.fit` step does not need to be retraced.
* Custom training loop: call `loss.set_step(step)` once per step (or at least when `step` crosses
  `drw_step`); it assigns the variable only when its value changes.
* `model.fit`: pass `DeferredReweighting(loss)` in `callbacks`; it counts optimizer steps (starting from
  `model.optimizer.iterations` at train begin) and calls `set_step` before every batch.
* Create the loss inside `strategy.scope()` when training under a distribution strategy (the variable is
  then mirrored; `set_step` is called from the cross-replica context).

Reduction is the Keras one (mean over the batch of the weighted per-example loss); PyTorch's weighted
`F.cross_entropy` divides by the sum of the batch's weights instead.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf.losses.class_balanced import (_validate_beta, _validate_counts, class_balanced_weights,
                                                example_weights, labels_to_targets, nan_for_invalid)


def _check_classes(y_pred, num_classes: int):
    if y_pred.shape[-1] is not None and y_pred.shape[-1] != num_classes:
        raise ValueError(f"y_pred has {y_pred.shape[-1]} classes but samples_per_class has {num_classes}")


def _cross_entropy(labels, targets, logits):
    if labels is not None:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def _number(value, name: str, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Pure functions (per-example losses, float32 [B])


def logit_adjustment_offsets(samples_per_class, tau: float = 1.0) -> np.ndarray:
    """tau * log(pi_j), pi_j = n_j / sum(n) (float64 [C])."""
    counts = _validate_counts(samples_per_class)
    return tau * np.log(counts / counts.sum())


def logit_adjusted_loss(y_true, y_pred, offsets):
    """Menon et al. 2021 eq 10: CE(z + offsets, y) with offsets = tau * log(prior)."""
    z = tf.cast(y_pred, tf.float32)
    labels, targets = labels_to_targets(y_true, z.shape[-1])
    loss = _cross_entropy(labels, targets, z + tf.cast(offsets, tf.float32))
    return nan_for_invalid(loss, labels, z.shape[-1])


def ldam_margins(samples_per_class, max_margin: float = 0.5) -> np.ndarray:
    """Cao et al. 2019 eq 13: m_j proportional to n_j^{-1/4}, the largest equal to max_margin."""
    counts = _validate_counts(samples_per_class)
    m = counts ** -0.25
    return m * (max_margin / m.max())


def ldam_loss(y_true, y_pred, margins, scale: float = 30.0, class_weights=None):
    """Per-example LDAM: w_y * CE(s * (z - m * y_onehot), y) (for one-hot targets the margin is y . m)."""
    z = tf.cast(y_pred, tf.float32)
    labels, targets = labels_to_targets(y_true, z.shape[-1])
    adjusted = scale * (z - targets * tf.cast(margins, tf.float32))
    loss = _cross_entropy(labels, targets, adjusted)
    if class_weights is not None:
        loss = example_weights(labels, targets, tf.cast(class_weights, tf.float32)) * loss
    return nan_for_invalid(loss, labels, z.shape[-1])


# --------------------------------------------------------------------------------------------------
# Keras losses


@keras.saving.register_keras_serializable(package="finegrain_tf")
class LogitAdjustedLoss(keras.losses.Loss):
    """Logit-adjusted softmax cross-entropy (Menon et al. 2021): CE(z + tau*log(pi), y).

    Predict with the raw logits z (the adjustment is for training only).
    """

    def __init__(self, samples_per_class: Sequence[int], tau: float = 1.0, reduction="sum_over_batch_size",
                 name: str = "logit_adjusted_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        counts = _validate_counts(samples_per_class)
        self.tau = _number(tau, "tau")
        self.samples_per_class = [int(c) for c in counts]
        self.offsets = logit_adjustment_offsets(counts, self.tau).astype(np.float32)

    def call(self, y_true, y_pred):
        _check_classes(y_pred, len(self.samples_per_class))
        return logit_adjusted_loss(y_true, y_pred, self.offsets)

    def get_config(self):
        config = super().get_config()
        config.update(samples_per_class=list(self.samples_per_class), tau=self.tau)
        return config


@keras.saving.register_keras_serializable(package="finegrain_tf")
class BalancedSoftmaxLoss(keras.losses.Loss):
    """Balanced Softmax (Ren et al. 2020): CE(z + log(n), y); predict with the raw logits."""

    def __init__(self, samples_per_class: Sequence[int], reduction="sum_over_batch_size",
                 name: str = "balanced_softmax_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        counts = _validate_counts(samples_per_class)
        self.samples_per_class = [int(c) for c in counts]
        self.offsets = np.log(counts).astype(np.float32)

    def call(self, y_true, y_pred):
        _check_classes(y_pred, len(self.samples_per_class))
        return logit_adjusted_loss(y_true, y_pred, self.offsets)

    def get_config(self):
        config = super().get_config()
        config.update(samples_per_class=list(self.samples_per_class))
        return config


@keras.saving.register_keras_serializable(package="finegrain_tf")
class LDAMLoss(keras.losses.Loss):
    """LDAM loss with deferred re-weighting (Cao et al. 2019).

    Args:
      samples_per_class: training-set counts per class.
      max_margin: the largest margin (C in the paper's m_j = C / n_j^{1/4}); 0.5 in the paper.
      scale: logit scale s (30 for cosine logits as in the paper's code).
      beta: class-balanced beta of the DRW stage (0.9999 in the paper).
      drw_step: training step from which DRW weights apply; -1 = never (plain LDAM), 0 = from the start.

    The DRW switch: `set_step(step)` (custom loops) or the `DeferredReweighting` callback (model.fit).
    """

    def __init__(self, samples_per_class: Sequence[int], max_margin: float = 0.5, scale: float = 30.0,
                 beta: float = 0.9999, drw_step: int = -1, reduction="sum_over_batch_size",
                 name: str = "ldam_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        counts = _validate_counts(samples_per_class)
        self.max_margin = _number(max_margin, "max_margin", 0.0)
        self.scale = _number(scale, "scale", 0.0, strict=True)
        self.beta = _validate_beta(beta)
        if isinstance(drw_step, bool) or not isinstance(drw_step, numbers.Integral) or drw_step < -1:
            raise ValueError(f"drw_step must be an int >= -1 (-1 = never), got {drw_step!r}")
        self.drw_step = int(drw_step)
        self.samples_per_class = [int(c) for c in counts]
        self.margins = ldam_margins(counts, self.max_margin).astype(np.float32)
        self.drw_weights = class_balanced_weights(counts, self.beta).astype(np.float32)
        self.plain_weights = class_balanced_weights(counts, 0.0).astype(np.float32)  # all ones
        self.drw_active = tf.Variable(1.0 if self.drw_step == 0 else 0.0, trainable=False,
                                      dtype=tf.float32, name="drw_active",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def set_step(self, step) -> bool:
        """Switches the DRW weights on when step >= drw_step (off before). Returns whether they're on."""
        active = self.drw_step >= 0 and int(step) >= self.drw_step
        if bool(self.drw_active.numpy() > 0.5) != active:
            self.drw_active.assign(1.0 if active else 0.0)
        return active

    def current_weights(self) -> tf.Tensor:
        a = tf.convert_to_tensor(self.drw_active)
        return self.plain_weights + a * (self.drw_weights - self.plain_weights)

    def call(self, y_true, y_pred):
        _check_classes(y_pred, len(self.samples_per_class))
        weights = None if self.drw_step < 0 else self.current_weights()
        return ldam_loss(y_true, y_pred, self.margins, self.scale, weights)

    def get_config(self):
        config = super().get_config()
        config.update(samples_per_class=list(self.samples_per_class), max_margin=self.max_margin,
                      scale=self.scale, beta=self.beta, drw_step=self.drw_step)
        return config


class DeferredReweighting(keras.callbacks.Callback):
    """model.fit callback driving `LDAMLoss.set_step` (or any object with `set_step`) every batch.

    The step count starts at `model.optimizer.iterations` when training begins (so resumed runs and
    several fit calls stay consistent) and increases by one per training batch.
    """

    def __init__(self, loss):
        super().__init__()
        if not hasattr(loss, "set_step"):
            raise ValueError(f"loss {loss!r} has no set_step method")
        self.loss = loss
        self._step = 0

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        self._step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        self.loss.set_step(self._step)

    def on_train_batch_begin(self, batch, logs=None):
        self.loss.set_step(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
