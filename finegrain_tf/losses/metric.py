"""Triplet losses for deep metric learning (Cui, ch.2, eq 2.1) and the shared mining helpers.

Eq 2.1 (seed 000, §2.3.1):   L(x, x_p, x_n) = max{0, ||f(x) - f(x_p)||^2 - ||f(x) - f(x_n)||^2 + m}.

`TripletLoss` mines the triplets inside a batch of (labels [B], embeddings [B, D]):

- ``mining="violating"``: mean of eq 2.1 over the valid triplets whose loss is > 0 (the seed's online
  scheme of §2.3.2: train only on triplets that violate the constraint, not on the hardest ones).
- ``mining="all"``: mean of eq 2.1 over all valid triplets (a != p, y_a == y_p, y_n != y_a).
- ``mining="semi_hard"``: tensorflow-addons' ``TripletSemiHardLoss``. For every positive pair (a, p) the
  negative is the closest negative with D_an > D_ap; if there is none, the farthest negative of a. The
  loss is sum over positive pairs of max(m + D_ap - D_an*, 0) divided by the number of positive pairs.
- ``mining="hard"``: tensorflow-addons' ``TripletHardLoss`` (soft=False): per anchor the farthest positive
  and the closest negative, max(D_ap* - D_an* + m, 0), mean over all anchors (an anchor without a
  positive uses the smallest distance of its row, as tfa does).

Distances (``distance``): ``"squared_l2"`` (tfa ``"L_2"``, which is squared), ``"l2"`` (Euclidean, with a
zero-safe square root so the gradient stays finite for coincident embeddings) and ``"cosine"``
(1 - cos, tfa ``"angular"``).

Deviation from tfa, by design: a batch without any valid triplet (no positive pair, or one class only)
gives 0 and zero gradients (tfa returns NaN for the former and m + mean D_ap for the latter).

No mode builds a B x B x B tensor: "all"/"violating" count triplets and semi_hard ranks each positive
among the negatives with one sort per row (cumulative counts over the sorted row), so mining is
O(B^2 log B) time and O(B^2) memory.

- ``mining="sampled"``: no mining; y_pred [B, 3, D] holds triplets formed outside the batch (anchor,
  positive, negative), e.g. by the quasi-online sampler of `finegrain_tf.sampling` (§2.3.2-2.3.3);
  eq 2.1 per triplet, y_true is ignored.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from finegrain_tf.ops.xla import in_xla_context

MININGS = ("violating", "all", "semi_hard", "hard")  # in-batch mining of (labels, embeddings [B, D])
SAMPLED = "sampled"  # explicit triplets [B, 3, D] from a sampler
DISTANCES = ("squared_l2", "l2", "cosine")


# --------------------------------------------------------------------------------------------------
# Distances and masks


def _check(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def check_margin_loss_args(margin, **options: tuple[str, tuple[str, ...]]) -> float:
    """Constructor checks of the margin losses (here and in pairwise.py): each keyword is
    `name=(value, choices)`; the margin must be >= 0 (NaN refused). Returns the margin as a float."""
    for name, (value, choices) in options.items():
        _check(name, value, choices)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    return float(margin)


def safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    """sqrt(x) for x >= 0 with value 0 and gradient 0 at x == 0 (no inf/NaN in the backward pass)."""
    positive = x > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


def pairwise_distances(embeddings: tf.Tensor, distance: str = "squared_l2") -> tf.Tensor:
    """[B, D] -> [B, B] distance matrix, computed like tfa's `pairwise_distance` / `angular_distance`.

    squared_l2: ||a||^2 + ||b||^2 - 2 a.b clipped at 0, zero diagonal; l2: its zero-safe square root;
    cosine: 1 - cos(a, b) (clipped at 0, zero diagonal).
    """
    _check("distance", distance, DISTANCES)
    x = tf.cast(embeddings, tf.float32)
    n = tf.shape(x)[0]
    if distance == "cosine":
        x = tf.math.l2_normalize(x, axis=1)
        d = tf.maximum(1.0 - tf.matmul(x, x, transpose_b=True), 0.0)
    else:
        sq = tf.reduce_sum(tf.square(x), axis=1)
        d = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
        d = tf.maximum(d, 0.0)
        if distance == "l2":
            d = safe_sqrt(d)
    return d * (1.0 - tf.eye(n, dtype=d.dtype))


def triplet_masks(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Boolean [B, B] masks: positives (same label, i != j) and negatives (different label)."""
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def _as_int_labels(labels) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        labels = tf.round(labels)
    return tf.reshape(tf.cast(labels, tf.int64), [-1])


def _masked_max(d, mask, fallback):
    """Row max over `mask`; `fallback` [B] for rows without a masked entry."""
    big_neg = tf.fill(tf.shape(d), tf.constant(-3.0e38, d.dtype))
    out = tf.reduce_max(tf.where(mask, d, big_neg), axis=1)
    return tf.where(tf.reduce_any(mask, axis=1), out, fallback)


def _masked_min(d, mask, fallback):
    big = tf.fill(tf.shape(d), tf.constant(3.0e38, d.dtype))
    out = tf.reduce_min(tf.where(mask, d, big), axis=1)
    return tf.where(tf.reduce_any(mask, axis=1), out, fallback)


def _sorted_flags(values, flags):
    """Per row, sorts `values` (>= 0) ascending with ties broken by `flags` (0..3) ascending.

    One `top_k` of an int64 key per row (the float32 bit pattern, monotonic for non-negative floats,
    times 4 plus the flag) returns the flags in sorted order without any gather, and the order.
    Returns (sorted values float32 [B, B], sorted flags int32 [B, B], order int32 [B, B]).
    """
    # abs() maps a possible -0.0 to +0.0 (its sign bit would sort it first).
    bits = tf.cast(tf.bitcast(tf.abs(tf.stop_gradient(values)), tf.int32), tf.int64)
    key = bits * 4 + tf.cast(flags, tf.int64)
    negated, order = tf.math.top_k(-key, k=tf.shape(key)[1], sorted=True)  # ties: lower index first
    key = -negated
    return (tf.bitcast(tf.cast(tf.bitwise.right_shift(key, 2), tf.int32), tf.float32),
            tf.cast(tf.bitwise.bitwise_and(key, 3), tf.int32), order)


def _scatter_to_columns(coef_sorted, columns):
    """[B, B] coefficients of sorted slots -> coefficients of the original columns (summed)."""
    b = tf.shape(columns)[0]
    ids = tf.range(b)[:, None] * b + columns
    return tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(coef_sorted, [-1]), tf.reshape(ids, [-1]),
                                                   b * b), [b, b])


def _all_or_violating(d, pos, neg, margin, mining):
    """Sums of eq 2.1 over all valid triplets per anchor, without a B^3 tensor.

    With t_ap = D_ap + m, the triplet (a, p, n) violates iff D_an < t_ap, and
    sum_{p,n} max(t_ap - D_an, 0) = sum_p cnt_ap * t_ap - sum_n c_an * D_an, where cnt_ap = #{n: D_an < t_ap}
    and c_an = #{p: t_ap > D_an}. Both counts come from one sort per row of the values t_ap (positives)
    and D_an (negatives), ties putting t before D so both counts use the same strict comparison. The
    counts are mapped back to their columns and the sum is evaluated on D itself: it is linear in D
    given the counts, so autodiff's gradient is exact and costs one multiply.
    """
    big = tf.constant(3.0e38, d.dtype)
    values = tf.where(pos, d + margin, tf.where(neg, d, big))
    flags = tf.where(pos, 0, tf.where(neg, 1, 2))
    _, sorted_flags, order = _sorted_flags(values, flags)
    is_pos = tf.cast(tf.equal(sorted_flags, 0), d.dtype)
    is_neg = tf.cast(tf.equal(sorted_flags, 1), d.dtype)
    neg_before = tf.cumsum(is_neg, axis=1, exclusive=True)  # = cnt_ap at a positive's slot
    pos_before = tf.cumsum(is_pos, axis=1, exclusive=True)  # = #{t_ap <= D_an} at a negative's slot
    pos_count = tf.reduce_sum(is_pos, axis=1, keepdims=True)
    coef = _scatter_to_columns(is_pos * neg_before - is_neg * (pos_count - pos_before), order)
    per_anchor = tf.reduce_sum(coef * tf.where(pos, d + margin, tf.where(neg, d, 0.0)), axis=1)
    if mining == "all":
        normalizer = tf.reduce_sum(pos_count[:, 0] * tf.reduce_sum(is_neg, axis=1))
    else:
        normalizer = tf.reduce_sum(is_pos * neg_before)
    return per_anchor, normalizer


def _semi_hard(d, pos, neg, margin):
    """tfa TripletSemiHardLoss: negative = min{D_an : D_an > D_ap}, else max_n D_an (else row min).

    One sort per row of the positives' and negatives' distances (ties: negatives first), so the
    number r of negatives before a positive's slot is #{n: D_an <= D_ap}; its semi-hard negative is
    the (r + 1)-th negative of the sorted row. The loss is then gathered from D at the chosen
    (a, p) and (a, n*) only, so autodiff's gradient is exact and sparse.
    """
    flags = tf.where(neg, 0, tf.where(pos, 1, 2))
    big = tf.constant(3.0e38, d.dtype)
    sorted_d, sorted_flags, order = _sorted_flags(tf.where(tf.logical_or(pos, neg), d, big), flags)
    is_neg = tf.equal(sorted_flags, 0)
    is_pos = tf.equal(sorted_flags, 1)
    neg_rank = tf.cumsum(tf.cast(is_neg, tf.int32), axis=1)  # inclusive
    neg_count = neg_rank[:, -1]
    row_min = tf.reduce_min(tf.stop_gradient(d), axis=1)
    if in_xla_context():
        return _semi_hard_static(d, margin, sorted_d, is_pos, order, neg_rank, neg_count, row_min)
    # Only the positive slots need a negative (~B * K of B^2 entries): work on them alone. The
    # negatives of all rows, in sorted order, are one flat vector; row a's r-th is at start_a + r.
    pos_at = tf.cast(tf.where(is_pos), tf.int32)  # [P, 2] (anchor, sorted slot)
    anchor = pos_at[:, 0]
    rank = tf.gather_nd(neg_rank, pos_at)  # negatives with D_an <= D_ap
    count = tf.gather(neg_count, anchor)
    start = tf.gather(tf.cumsum(neg_count, exclusive=True), anchor)
    which = tf.minimum(rank, tf.maximum(count - 1, 0))  # the farthest one when none is farther
    # (one padding entry, read only by rows without negatives, whose D_an* is the row minimum)
    neg_columns = tf.concat([tf.boolean_mask(order, is_neg), tf.zeros([1], order.dtype)], 0)
    n_col = tf.gather(neg_columns, start + which)
    p_col = tf.gather_nd(order, pos_at)
    d_ap = tf.gather_nd(d, tf.stack([anchor, p_col], 1))
    d_an = tf.where(count > 0, tf.gather_nd(d, tf.stack([anchor, n_col], 1)), tf.gather(row_min, anchor))
    per_pair = tf.nn.relu(margin + d_ap - d_an)
    per_anchor = tf.math.unsorted_segment_sum(per_pair, anchor, tf.shape(d)[0])
    return per_anchor, tf.reduce_sum(tf.cast(pos, d.dtype))


def _semi_hard_static(d, margin, sorted_d, is_pos, order, neg_rank, neg_count, row_min):
    """`_semi_hard` with static shapes for XLA: the semi-hard slot of every sorted slot is found by
    a binary search in the running count of negatives, and the loss is evaluated on D with
    coefficients +1 at (a, p) and -1 at (a, n*) (linear in D given the choices: exact gradient)."""
    neg_count = neg_count[:, None]
    target = tf.minimum(neg_rank + 1, tf.maximum(neg_count, 1))  # the farthest when none is farther
    slot = tf.minimum(tf.searchsorted(neg_rank, target, side="left"), tf.shape(d)[1] - 1)
    has_neg = neg_count > 0
    semi = tf.where(has_neg, tf.gather(sorted_d, slot, batch_dims=1), row_min[:, None])
    ones = tf.cast(tf.logical_and(is_pos, margin + sorted_d - semi > 0), d.dtype)
    chosen = tf.gather(order, slot, batch_dims=1)
    coef = _scatter_to_columns(tf.concat([ones, -tf.where(has_neg, ones, 0.0)], 1),
                               tf.concat([order, chosen], 1))
    fallback = tf.where(has_neg, 0.0, row_min[:, None])[:, 0]  # constant D_an* without negatives
    per_anchor = tf.reduce_sum(coef * d, axis=1) + tf.reduce_sum(ones, axis=1) * (margin - fallback)
    return per_anchor, tf.reduce_sum(tf.cast(is_pos, d.dtype))


def _hard(d, pos, neg, margin):
    """tfa TripletHardLoss (soft=False): hardest positive and hardest negative per anchor."""
    hard_pos = _masked_max(d, pos, tf.reduce_min(d, axis=1))
    hard_neg = _masked_min(d, neg, tf.reduce_max(d, axis=1))
    per_anchor = tf.nn.relu(hard_pos - hard_neg + margin)
    return per_anchor, tf.cast(tf.shape(d)[0], d.dtype)


def triplet_loss_terms(labels, embeddings, margin: float = 0.2, mining: str = "violating",
                       distance: str = "squared_l2") -> tuple[tf.Tensor, tf.Tensor]:
    """(per-anchor loss sums [B], normalizer); the batch loss is sum(per_anchor) / normalizer.

    Both are 0 for a batch without a valid triplet.
    """
    _check("mining", mining, MININGS)
    _check("distance", distance, DISTANCES)
    labels = _as_int_labels(labels)
    d = pairwise_distances(embeddings, distance)
    pos, neg = triplet_masks(labels)
    margin = tf.cast(margin, d.dtype)
    if mining in ("all", "violating"):
        per_anchor, normalizer = _all_or_violating(d, pos, neg, margin, mining)
    elif mining == "semi_hard":
        per_anchor, normalizer = _semi_hard(d, pos, neg, margin)
    else:
        per_anchor, normalizer = _hard(d, pos, neg, margin)
    valid = tf.logical_and(tf.reduce_any(pos), tf.reduce_any(neg))
    valid = tf.logical_and(valid, normalizer > 0)
    per_anchor = tf.where(valid, per_anchor, tf.zeros_like(per_anchor))
    normalizer = tf.where(valid, normalizer, tf.zeros_like(normalizer))
    return per_anchor, normalizer


def _scaled(per_anchor, normalizer):
    """Per-anchor values whose mean is sum / normalizer (0 when normalizer == 0)."""
    n = tf.cast(tf.shape(per_anchor)[0], per_anchor.dtype)
    return tf.math.divide_no_nan(per_anchor * n, normalizer)


def triplet_loss(labels, embeddings, margin: float = 0.2, mining: str = "violating",
                 distance: str = "squared_l2") -> tf.Tensor:
    """Per-anchor triplet loss [B] (eq 2.1 with in-batch mining) whose mean is the batch loss.

    The mean over anchors equals the loss of the chosen mining mode (see the module docstring), so a
    Keras "sum_over_batch_size" reduction returns exactly tfa's value for semi_hard / hard.
    """
    per_anchor, normalizer = triplet_loss_terms(labels, embeddings, margin, mining, distance)
    values = _scaled(per_anchor, normalizer)
    # Non-finite embeddings give NaN, never a silent 0 (mining may select no triplet around a NaN).
    finite = tf.reduce_all(tf.math.is_finite(tf.cast(embeddings, tf.float32)))
    return tf.where(finite, values, tf.constant(float("nan"), values.dtype))


def _gathered_triplet_loss(labels, embeddings, margin, mining, distance):
    """Mining over the global batch of all replicas; returns the values of this replica's anchors."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return triplet_loss(labels, embeddings, margin, mining, distance)
    labels = _as_int_labels(labels)
    embeddings = tf.cast(embeddings, tf.float32)
    local_n = tf.shape(labels)[0]
    all_labels = ctx.all_gather(labels, axis=0)
    all_embeddings = ctx.all_gather(embeddings, axis=0)
    # Replicas may hold different batch sizes (last partial batch): find this replica's offset.
    sizes = ctx.all_gather(tf.reshape(local_n, [1]), axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica_id])
    values = triplet_loss(all_labels, all_embeddings, margin, mining, distance)
    # `values` has mean == global loss over the global batch G; each replica returns its slice,
    # rescaled so the Keras/`compute_average_loss` convention (local mean / num_replicas, summed
    # over replicas) recovers the global loss.
    global_n = tf.cast(tf.shape(all_labels)[0], values.dtype)
    replicas = tf.cast(ctx.num_replicas_in_sync, values.dtype)
    scale = tf.math.divide_no_nan(tf.cast(local_n, values.dtype) * replicas, global_n)
    return values[offset:offset + local_n] * scale


@keras.saving.register_keras_serializable(package="finegrain_tf")
class TripletLoss(keras.losses.Loss):
    """Eq 2.1 with in-batch mining on y_true = labels [B], y_pred = embeddings [B, D], or on sampled
    triplets y_pred [B, 3, D] (mining="sampled").

    Args:
      margin: m of eq 2.1 (seed: 0.2).
      mining: "violating" (default, seed §2.3.2), "all", "semi_hard" (= tfa TripletSemiHardLoss),
        "hard" (= tfa TripletHardLoss, soft=False), or "sampled" (y_pred holds (anchor, positive,
        negative) triplets formed outside the batch; no mining, y_true ignored).
      distance: "squared_l2" (= tfa "L_2"), "l2", "cosine" (= tfa "angular").
      gather_across_replicas: under tf.distribute, all-gather labels and embeddings so mining sees the
        global batch (each replica returns the terms of its own anchors).
    """

    def __init__(self, margin: float = 0.2, mining: str = "violating", distance: str = "squared_l2",
                 gather_across_replicas: bool = False, name: str = "triplet_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        margin = check_margin_loss_args(margin, mining=(mining, MININGS + (SAMPLED,)),
                                        distance=(distance, DISTANCES))
        if mining == SAMPLED and gather_across_replicas:
            raise ValueError("gather_across_replicas=True has nothing to gather with mining='sampled' "
                             "(each sampled triplet is complete on its replica)")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = margin
        self.mining = mining
        self.distance = distance
        self.gather_across_replicas = bool(gather_across_replicas)

    def call(self, y_true, y_pred):
        if self.mining == SAMPLED:
            return triplet_margin_loss(y_pred, self.margin, self.distance)
        if self.gather_across_replicas:
            return _gathered_triplet_loss(y_true, y_pred, self.margin, self.mining, self.distance)
        return triplet_loss(y_true, y_pred, self.margin, self.mining, self.distance)

    def get_config(self):
        return {"margin": self.margin, "mining": self.mining, "distance": self.distance,
                "gather_across_replicas": self.gather_across_replicas, "name": self.name,
                "reduction": self.reduction}


def triplet_margin_loss(triplets, margin: float = 0.2, distance: str = "squared_l2") -> tf.Tensor:
    """Eq 2.1 on explicit triplets: y_pred [B, 3, D] (anchor, positive, negative) -> loss [B]."""
    _check("distance", distance, DISTANCES)
    x = tf.cast(triplets, tf.float32)
    a, p, n = x[:, 0], x[:, 1], x[:, 2]
    if distance == "cosine":
        a, p, n = (tf.math.l2_normalize(v, axis=-1) for v in (a, p, n))
        d_ap = 1.0 - tf.reduce_sum(a * p, axis=-1)
        d_an = 1.0 - tf.reduce_sum(a * n, axis=-1)
    else:
        d_ap = tf.reduce_sum(tf.square(a - p), axis=-1)
        d_an = tf.reduce_sum(tf.square(a - n), axis=-1)
        if distance == "l2":
            d_ap, d_an = safe_sqrt(d_ap), safe_sqrt(d_an)
    return tf.nn.relu(d_ap - d_an + margin)

