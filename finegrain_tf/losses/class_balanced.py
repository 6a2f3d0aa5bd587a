"""Class-balanced loss based on the effective number of samples (seed 000, chapter 5).

Equations (Cui, dissertation ch.5; Cui et al., CVPR 2019):

* eq 5.2  effective number   E_n = (1 - beta^n) / (1 - beta)
* §5.3    weight of class c  alpha_c = (1 - beta) / (1 - beta^{n_c}), rescaled so that sum_c alpha_c = C
* eq 5.8  CB softmax  = alpha_y * CE_softmax(z, y)
* eq 5.11 CB sigmoid  = alpha_y * sum_j BCE(z_j, y_j)
* eq 5.13 CB focal    = alpha_y * sum_j (1 - p^t_j)^gamma * BCE(z_j, y_j)

Details fixed by the official code (richardaecn/class-balanced-loss) and followed here:

* the weights are rescaled to sum to the number of classes C;
* for sigmoid / focal, the weight of the example's true class multiplies every one of its C logits' terms;
* the focal modulator is computed in log space, exp(-gamma*y*z - gamma*log(1 + exp(-z))), with
  `softplus` for log(1 + exp(.)), so |z| up to 1e4 gives a finite loss and finite gradients even for
  gamma < 1 (the naive (1 - p)^gamma has an infinite derivative at p = 1 when gamma < 1).

Per-example losses are reduced the Keras way (by default: the mean over the examples of the batch).
The official PyTorch sigmoid variant averages over the B*C elements instead of summing over classes; we
follow eq 5.11 (sum over classes), so our sigmoid loss is C times the official PyTorch number.

Counts must come from the WHOLE training set (`count_labels`), never from a batch: a class absent from
a batch has count 0 and 1 - beta^0 = 0 is the classic division-by-zero NaN.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf.utils.labels import count_labels  # noqa: F401  (public here: the counts CB needs)

_LOSS_TYPES = ("softmax", "sigmoid", "focal")
_EPS = 1e-7


# --------------------------------------------------------------------------------------------------
# Counts and weights (numpy, float64)


def _validate_counts(samples_per_class) -> np.ndarray:
    """Returns the counts as a float64 array; ValueError naming the class index and the bad value."""
    if isinstance(samples_per_class, (tf.Tensor, tf.Variable)):
        samples_per_class = samples_per_class.numpy()
    counts = np.asarray(samples_per_class)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"samples_per_class must be a non-empty 1-D sequence of counts, got shape "
                         f"{counts.shape}: {samples_per_class!r}")
    for i, value in enumerate(counts.tolist()):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"samples_per_class[{i}] = {value!r} is not a number")
        if not np.isfinite(value) or float(value) != int(value):
            raise ValueError(f"samples_per_class[{i}] = {value!r} is not an integer count")
        if value <= 0:
            raise ValueError(f"samples_per_class[{i}] = {value!r} must be > 0 (count labels over the "
                             f"whole training set, not a batch; drop classes with no training image)")
    return counts.astype(np.float64)


def _validate_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    return float(beta)


def effective_number(samples_per_class, beta: float) -> np.ndarray:
    """Eq 5.2: E_n = (1 - beta^n) / (1 - beta) per class, float64. beta = 0 gives 1 for every class."""
    counts = _validate_counts(samples_per_class)
    beta = _validate_beta(beta)
    # -expm1(n * log(beta)) = 1 - beta^n without cancellation for beta close to 1.
    if beta == 0.0:
        return np.ones_like(counts)
    return -np.expm1(counts * np.log(beta)) / (1.0 - beta)


def class_balanced_weights(samples_per_class, beta: float) -> np.ndarray:
    """§5.3: alpha_c = (1 - beta)/(1 - beta^{n_c}) = 1/E_{n_c}, rescaled to sum to C (float64).

    beta = 0 gives all ones (no re-weighting); beta -> 1 approaches inverse class frequency.
    """
    inv = 1.0 / effective_number(samples_per_class, beta)
    return inv * (inv.size / inv.sum())


def _check_label_range(labels: np.ndarray, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is outside [0, {num_classes}) (num_classes={num_classes})")


# --------------------------------------------------------------------------------------------------
# Shared tensor helpers (also used by long_tail.py)


def labels_to_targets(y_true, num_classes: int, need_targets: bool = True):
    """Returns (int labels [B] or None, float32 targets [B, C] or None).

    Sparse int labels ([B] or [B, 1]) and one-hot / soft targets ([B, C]) are both accepted (Keras casts
    y_true to float, so labels are cast back to int here); a 2-D y_true of another width is a
    ValueError naming both widths. Sparse labels outside [0, C) raise: a ValueError eagerly, an
    InvalidArgumentError naming the bound inside a graph; under XLA, where assertions are compiled
    out, the losses return NaN for such examples (`nan_for_invalid`). For sparse labels the one-hot
    targets are only built when `need_targets`.
    """
    y_true = tf.convert_to_tensor(y_true)
    rank = y_true.shape.rank
    last = y_true.shape[-1] if rank else None
    if rank is not None and rank >= 2 and last == num_classes and not (num_classes == 1):
        targets = tf.cast(y_true, tf.float32)
        return None, targets
    if rank == 2 and last is not None and last != 1:
        raise ValueError(f"y_true has shape {tuple(y_true.shape)}: one-hot targets of width {last} but "
                         f"y_pred has {num_classes} classes (pass int labels [B] or one-hot [B, "
                         f"{num_classes}])")
    labels = tf.reshape(y_true, [-1])
    if labels.dtype.is_floating:
        labels = tf.cast(tf.round(labels), tf.int32)
    else:
        labels = tf.cast(labels, tf.int32)
    labels = check_labels(labels, num_classes)
    return labels, (tf.one_hot(labels, num_classes, dtype=tf.float32) if need_targets else None)


def check_labels(labels, num_classes: int):
    """Raises on labels outside [0, num_classes): ValueError eagerly, assertion op in a graph."""
    if tf.executing_eagerly() and hasattr(labels, "numpy"):
        _check_label_range(labels.numpy().reshape(-1).astype(np.int64), num_classes)
        return labels
    with tf.control_dependencies([
            tf.debugging.assert_non_negative(labels, message="class label < 0"),
            tf.debugging.assert_less(labels, tf.constant(num_classes, labels.dtype),
                                     message=f"class label >= num_classes ({num_classes})")]):
        return tf.identity(labels)


def nan_for_invalid(loss, labels, num_classes: int):
    """NaN where a sparse label is outside [0, C): under XLA (jit_compile) assertions compile to no-ops,
    so a bad label still surfaces as a NaN loss instead of a silently wrong number."""
    if labels is None:
        return loss
    valid = tf.logical_and(labels >= 0, labels < num_classes)
    return tf.where(valid, loss, tf.constant(float("nan"), loss.dtype))


def logits_from_probabilities(y_pred, loss_type: str):
    """Inverse link for from_logits=False: log-probabilities (softmax) or log-odds (sigmoid)."""
    p = tf.clip_by_value(y_pred, _EPS, 1.0 - _EPS)
    if loss_type == "softmax":
        return tf.math.log(p)  # softmax(log p) = p for normalised p
    return tf.math.log(p) - tf.math.log1p(-p)


def example_weights(labels, targets, class_weights):
    """alpha_y per example: gather for sparse labels, <targets, alpha> for one-hot / soft targets."""
    if labels is not None:
        return tf.gather(class_weights, labels)
    return tf.reduce_sum(targets * class_weights, axis=-1)


# --------------------------------------------------------------------------------------------------
# Pure function


def class_balanced_loss(y_true, y_pred, class_weights, loss_type: str = "softmax", gamma: float = 1.0,
                        from_logits: bool = True):
    """Per-example class-balanced loss (eq 5.8 / 5.11 / 5.13), float32 [B].

    Args:
      y_true: int labels [B] / [B, 1], or one-hot targets [B, C].
      y_pred: logits [B, C] (or probabilities when from_logits=False).
      class_weights: [C] weights, e.g. `class_balanced_weights(counts, beta)`.
      loss_type: "softmax", "sigmoid" or "focal".
      gamma: focal exponent (>= 0); ignored unless loss_type == "focal".
    """
    if loss_type not in _LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(_LOSS_TYPES)}, got {loss_type!r}")
    z = tf.cast(y_pred, tf.float32)
    num_classes = z.shape[-1]
    if num_classes is None:
        raise ValueError(f"y_pred must have a static class dimension, got shape {z.shape}")
    class_weights = tf.cast(class_weights, tf.float32)
    labels, targets = labels_to_targets(y_true, num_classes, need_targets=False)
    if not from_logits:
        z = logits_from_probabilities(z, loss_type)
    w = example_weights(labels, targets, class_weights)
    if loss_type == "softmax":
        if labels is not None:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z)
        else:
            ce = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=z)
        return nan_for_invalid(w * ce, labels, num_classes)
    gamma = float(gamma) if loss_type == "focal" else 0.0
    if labels is not None:
        per_example = _sparse_focal_sum(z, labels, gamma)
    else:
        per_example = _dense_focal_sum(z, targets, gamma)
    return nan_for_invalid(w * per_example, labels, num_classes)


# --------------------------------------------------------------------------------------------------
# Sigmoid / focal terms with hand-written gradients
#
# Per logit z with target y, in log space (a = softplus(-z) = -log sigmoid(z), stable for any z):
#     BCE(z, y) = (1 - y) z + a,   modulator M = (1 - p_t)^gamma = exp(-gamma (y z + a)),   L = M BCE
#     dL/dz     = M (sigmoid(z) - y - gamma BCE (y - 1 + sigmoid(z)))
# gamma = 0 is the plain sigmoid loss (M = 1). Writing the gradient by hand avoids the ~3x longer
# chain autodiff builds through softplus/exp/multiply (benchmarks/bench_class_balanced.py).


def _softplus_neg(z):
    """a = log(1 + exp(-z)) and sigmoid(z) = exp(-a), both stable for |z| up to float32's range."""
    return tf.nn.relu(-z) + tf.math.log1p(tf.exp(-tf.abs(z)))


def _sparse_focal_sum(z, labels, gamma: float):
    """sum_j L(z_j, [j == label]) per row [B] for int labels [B]; dL/dz by hand.

    Every entry is first treated as a negative (y = 0: BCE = z + a, M = exp(-gamma a)); the B label
    entries are then corrected with gathered [B] vectors, so no one-hot [B, C] tensor is built.
    """
    rows = tf.stack([tf.range(tf.shape(labels)[0]), labels], 1)

    @tf.custom_gradient
    def focal_sum(z):
        a = _softplus_neg(z)
        bce0 = z + a
        m0 = tf.exp(-gamma * a) if gamma else None
        loss0 = m0 * bce0 if gamma else bce0
        z_y = tf.gather_nd(z, rows)
        a_y = tf.gather_nd(a, rows)
        m_y = tf.exp(-gamma * (z_y + a_y)) if gamma else tf.ones_like(a_y)  # (1 - sigmoid(z_y))^gamma
        # The label entries are replaced (not subtracted from the row sum: no cancellation).
        out = tf.reduce_sum(tf.tensor_scatter_nd_update(loss0, rows, m_y * a_y), -1)

        def grad(g):
            sig = tf.exp(-a)
            d0 = sig + gamma * bce0 * (1.0 - sig) if gamma else sig
            if gamma:
                d0 = m0 * d0
            sig_y = tf.exp(-a_y)
            d_y = m_y * (sig_y - 1.0 - gamma * a_y * sig_y)
            return tf.tensor_scatter_nd_update(g[:, None] * d0, rows, g * d_y)

        return out, grad

    return focal_sum(z)


def _dense_focal_sum(z, targets, gamma: float):
    """sum_j L(z_j, y_j) per row [B] for one-hot or soft targets [B, C]; dL/dz by hand."""

    @tf.custom_gradient
    def focal_sum(z):
        a = _softplus_neg(z)
        bce = (1.0 - targets) * z + a
        m = tf.exp(-gamma * (targets * z + a)) if gamma else None
        out = tf.reduce_sum(m * bce if gamma else bce, -1)

        def grad(g):
            sig = tf.exp(-a)
            d = sig - targets
            if gamma:
                d = m * (d - gamma * bce * (targets - 1.0 + sig))
            return g[:, None] * d

        return out, grad

    return focal_sum(z)


# --------------------------------------------------------------------------------------------------
# Keras loss


@keras.saving.register_keras_serializable(package="finegrain_tf")
class ClassBalancedLoss(keras.losses.Loss):
    """Class-balanced softmax / sigmoid / focal loss (seed 000 §5.3, eqs 5.8, 5.11, 5.13).

    `samples_per_class` are the training-set counts (`count_labels`); `beta` in [0, 1) (0 = unweighted);
    `gamma` >= 0 is the focal exponent. Accepts sparse int labels or one-hot targets. For
    sigmoid / focal, build the last layer with `finegrain_tf.layers.PriorBias` (§5.4.2).
    """

    def __init__(self, samples_per_class: Sequence[int], beta: float = 0.9999, loss_type: str = "softmax",
                 gamma: float = 1.0, from_logits: bool = True, reduction="sum_over_batch_size",
                 name: str = "class_balanced_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        counts = _validate_counts(samples_per_class)
        self.beta = _validate_beta(beta)
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(_LOSS_TYPES)}, got {loss_type!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma >= 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
        self.samples_per_class = [int(c) for c in counts]
        self.loss_type = loss_type
        self.gamma = float(gamma)
        self.from_logits = bool(from_logits)
        self.class_weights = class_balanced_weights(counts, self.beta).astype(np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.samples_per_class)

    def call(self, y_true, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.num_classes:
            raise ValueError(f"y_pred has {y_pred.shape[-1]} classes but samples_per_class has "
                             f"{self.num_classes}")
        return class_balanced_loss(y_true, y_pred, self.class_weights, self.loss_type, self.gamma,
                                   self.from_logits)

    def get_config(self):
        config = super().get_config()
        config.update(samples_per_class=list(self.samples_per_class), beta=self.beta,
                      loss_type=self.loss_type, gamma=self.gamma, from_logits=self.from_logits)
        return config
