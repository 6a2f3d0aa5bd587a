"""Anchor-point soft voting (seed 000 §2.3.4–2.3.5, eq 2.3) and its k-means initialiser.

Eq 2.3:  p_i = sum_j exp(-gamma ||f(x) - u_ij||^2) / sum_l sum_j exp(-gamma ||f(x) - u_lj||^2)

computed in log space: s_i = logsumexp_j(-gamma ||f(x) - u_ij||^2) and log p_i = s_i - logsumexp_l s_l,
so gamma up to 1e3 (and beyond) stays finite. gamma -> inf gives the class of the nearest anchor,
gamma -> 0 equal votes.
"""

from __future__ import annotations

import numpy as np
import keras
import tensorflow as tf

OUTPUTS = ("probabilities", "log_probabilities", "logits")


@keras.saving.register_keras_serializable(package="finegrain_tf")
class AnchorSoftVote(keras.layers.Layer):
    """Soft voting over K trainable anchors per class (eq 2.3): embeddings [B, D] -> [B, N].

    Args:
      num_classes: N.
      anchors_per_class: K (seed: 3).
      gamma: softness of eq 2.3 (seed: 5).
      output_mode: "probabilities" (p_i of eq 2.3, default), "log_probabilities" (log p_i) or "logits"
        (s_i = logsumexp_j(-gamma d_ij); softmax(s) = p). Train with "log_probabilities" or "logits"
        and `AnchorVoteLoss()` (from_logits=True, its default) for a loss that stays finite at
        large gamma; `AnchorVoteLoss` refuses probabilities given as logits and vice versa.

    The anchors u_ij are the weight "anchors" of shape [N, K, D]; set them with `set_anchors`
    (e.g. from `kmeans_anchors`) or learn them jointly with the network (eq 2.5).
    """

    def __init__(self, num_classes: int, anchors_per_class: int = 3, gamma: float = 5.0,
                 output_mode: str = "probabilities", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(anchors_per_class, (int, np.integer)) or anchors_per_class < 1:
            raise ValueError(f"anchors_per_class must be a positive int, got {anchors_per_class!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)) \
                or not np.isfinite(gamma) or not gamma > 0:
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
        if output_mode not in OUTPUTS:
            raise ValueError(f"output_mode={output_mode!r} is not one of {list(OUTPUTS)}")
        self.num_classes = int(num_classes)
        self.anchors_per_class = int(anchors_per_class)
        self.gamma = float(gamma)
        self.output_mode = output_mode

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"the embedding dimension must be known, got input shape {input_shape}")
        self.anchors = self.add_weight(
                name="anchors", shape=(self.num_classes, self.anchors_per_class, int(dim)),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / float(np.sqrt(dim))),
                trainable=True, dtype="float32")

    def set_anchors(self, anchors) -> None:
        """Assigns anchors of shape [N, K, D]."""
        anchors = np.asarray(anchors, dtype=np.float32)
        expected = tuple(self.anchors.shape)
        if anchors.shape != expected:
            raise ValueError(f"anchors must have shape {expected}, got {anchors.shape}")
        self.anchors.assign(anchors)

    def class_scores(self, inputs) -> tf.Tensor:
        """s_i = logsumexp_j(-gamma ||x - u_ij||^2), float32 [B, N]."""
        x = tf.cast(inputs, tf.float32)
        u = tf.cast(self.anchors, tf.float32)
        n, k, d = self.num_classes, self.anchors_per_class, tf.shape(u)[-1]
        flat = tf.reshape(u, [n * k, d])
        sq = (tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)
              + tf.reduce_sum(tf.square(flat), axis=-1)[None, :]
              - 2.0 * tf.matmul(x, flat, transpose_b=True))
        sq = tf.maximum(sq, 0.0)
        scores = tf.reshape(-self.gamma * sq, [-1, n, k])
        return tf.reduce_logsumexp(scores, axis=-1)

    def call(self, inputs):
        scores = self.class_scores(inputs)
        if self.output_mode == "logits":
            out = scores
        else:
            out = tf.nn.log_softmax(scores, axis=-1)
            if self.output_mode == "probabilities":
                out = tf.exp(out)
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "anchors_per_class": self.anchors_per_class, "gamma": self.gamma,
                "output_mode": self.output_mode}


def kmeans_anchors(embeddings, labels, K: int = 3, num_classes: int | None = None,
                   seed: int = 0) -> np.ndarray:
    """Anchors [N, K, D] by k-means per class in feature space (seed 000 §2.3.4, scikit-learn KMeans).

    A class with fewer than K distinct embeddings repeats its points (the anchors coincide, which
    leaves eq 2.3 unchanged up to a constant vote weight). Every class must have an embedding.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings [n, D] and labels [n] disagree: {x.shape} vs {y.shape}")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K!r}")
    n_cls = int(num_classes) if num_classes is not None else int(y.max()) + 1
    out = np.zeros((n_cls, K, x.shape[1]), dtype=np.float32)
    for c in range(n_cls):
        pts = x[y == c]
        if len(pts) == 0:
            raise ValueError(f"class {c} has no embeddings: cannot place its anchors")
        distinct = len(np.unique(pts, axis=0))
        if distinct <= K:
            reps = np.unique(pts, axis=0)
            centers = reps[np.arange(K) % len(reps)]
        else:
            km = KMeans(n_clusters=K, n_init=3, random_state=seed).fit(pts)
            centers = km.cluster_centers_
        out[c] = centers
    return out
