"""Anchor-vote classification loss (seed 000 eq 2.4) and the combined objective (eq 2.5).

Eq 2.4: L_cls = -log p_{C(x)} with p from eq 2.3 (`finegrain_tf.layers.AnchorSoftVote`).
Eq 2.5: L = omega * L_triplet + (1 - omega) * L_cls, omega = 0.1 in the seed.

With Keras this is a two-output model trained by plain `model.fit`:

    model = build_anchor_vote_model(embedding_model, num_classes)       # outputs {"embedding", "vote"}
    losses, weights = combined_objective(omega=0.1)
    model.compile(optimizer, loss=losses, loss_weights=weights)
    model.fit(images, {"embedding": labels, "vote": labels})

so the anchors and the network are updated jointly by the same gradient step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from finegrain_tf.losses.metric import TripletLoss
from finegrain_tf.ops.xla import in_xla_context


def _refuse_mismatched_outputs(z, from_logits: bool):
    """Refuses AnchorSoftVote probabilities given as logits and vice versa (defaults that disagree
    used to train silently worse): a ValueError eagerly, an assertion in a graph, NaN under XLA.

    With from_logits=True a batch whose every row is a probability vector (entries in [0, 1]
    summing to 1) is refused (logits / log-probabilities essentially never are); with
    from_logits=False any entry outside [0, 1] is.
    """
    in_unit = tf.logical_and(z >= 0.0, z <= 1.0)
    if from_logits:
        simplex = tf.logical_and(tf.reduce_all(in_unit, -1),
                                 tf.abs(tf.reduce_sum(z, -1) - 1.0) < 1e-4)
        bad = tf.logical_and(tf.reduce_all(simplex), tf.shape(z)[-1] > 1)
        message = ("AnchorVoteLoss(from_logits=True) received probabilities (every row sums to 1): use "
                   "AnchorSoftVote(output_mode='logits' or 'log_probabilities'), or from_logits=False")
    else:
        bad = tf.logical_not(tf.reduce_all(in_unit))
        message = ("AnchorVoteLoss(from_logits=False) received values outside [0, 1]: use "
                   "AnchorSoftVote(output_mode='probabilities') or from_logits=True")
    if tf.executing_eagerly():
        if bool(bad):
            raise ValueError(message)
        return z
    if in_xla_context():  # assertions compile to no-ops: make the mismatch visible as NaN
        return tf.where(bad, tf.constant(float("nan"), z.dtype), z)
    with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(bad), [message])]):
        return tf.identity(z)


def anchor_vote_loss(y_true, y_pred, from_logits: bool = True) -> tf.Tensor:
    """Per-example -log p_y [B]. from_logits: y_pred are AnchorSoftVote "logits"/"log_probabilities"
    (log p up to a per-row constant); otherwise probabilities p (clipped at 1e-38 before the log).
    A mismatch between `from_logits` and what y_pred holds is refused (`_refuse_mismatched_outputs`)."""
    y = tf.reshape(tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32), [-1])
    z = _refuse_mismatched_outputs(tf.cast(y_pred, tf.float32), from_logits)
    if from_logits:
        logp = tf.nn.log_softmax(z, axis=-1)
    else:
        logp = tf.math.log(tf.maximum(z, 1e-38))
    return -tf.gather(logp, y, batch_dims=1)


@keras.saving.register_keras_serializable(package="finegrain_tf")
class AnchorVoteLoss(keras.losses.Loss):
    """-log p_{C(x)} of eq 2.4 on (labels [B], AnchorSoftVote output [B, N])."""

    def __init__(self, from_logits: bool = True, name: str = "anchor_vote_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        return anchor_vote_loss(y_true, y_pred, self.from_logits)

    def get_config(self):
        return {"from_logits": self.from_logits, "name": self.name, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="finegrain_tf")
class CombinedObjective(keras.losses.Loss):
    """Eq 2.5 as one loss: omega * L_triplet(embedding) + (1 - omega) * L_cls(scores), per example.

    y_true: int labels [B]; y_pred: a dict {embedding_output: embeddings [B, D], vote_output: scores
    [B, N]}. `classification` is any Keras loss on (labels, scores) (default `AnchorVoteLoss`, eq 2.4;
    the training binary passes its class-balanced / long-tail loss). The same object trains a
    two-output model in `model.fit`: `model.compile(optimizer, loss=obj.losses,
    loss_weights=obj.loss_weights)`.

    The triplet term mines in the batch (`mining` of `TripletLoss`), or, with mining="sampled", takes
    triplets formed by a sampler: then the embedding output is [B, 3, D] (anchor, positive, negative)
    and y_true / the scores are those of the B anchors. The metric-learning task of the training
    binary trains eq 2.5 with this object in that form.
    """

    def __init__(self, omega: float = 0.1, margin: float = 0.2, mining: str = "violating",
                 distance: str = "squared_l2", gather_across_replicas: bool = False,
                 classification=None, embedding_output: str = "embedding",
                 vote_output: str = "vote", name: str = "combined_objective",
                 reduction: str = "sum_over_batch_size", dtype=None):
        if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not 0.0 <= omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {omega!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.omega = float(omega)
        self.triplet = TripletLoss(margin=margin, mining=mining, distance=distance,
                                   gather_across_replicas=gather_across_replicas)
        if isinstance(classification, dict):
            classification = keras.saving.deserialize_keras_object(classification)
        self.classification = classification or AnchorVoteLoss(from_logits=True)
        self.embedding_output = embedding_output
        self.vote_output = vote_output

    @property
    def losses(self) -> dict:
        return {self.embedding_output: self.triplet, self.vote_output: self.classification}

    @property
    def loss_weights(self) -> dict:
        return {self.embedding_output: self.omega, self.vote_output: 1.0 - self.omega}

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, dict) or set(y_pred) != {self.embedding_output, self.vote_output}:
            raise ValueError(f"y_pred must be a dict with the keys {self.embedding_output!r} and "
                             f"{self.vote_output!r}, got {y_pred!r}")
        per_example = (1.0 - self.omega) * self.classification.call(
            y_true, tf.cast(y_pred[self.vote_output], tf.float32))
        if self.omega:
            per_example += self.omega * self.triplet.call(
                y_true, tf.cast(y_pred[self.embedding_output], tf.float32))
        return per_example

    def get_config(self):
        triplet = self.triplet.get_config()
        return {"omega": self.omega, "margin": triplet["margin"], "mining": triplet["mining"],
                "distance": triplet["distance"],
                "gather_across_replicas": triplet["gather_across_replicas"],
                "classification": keras.saving.serialize_keras_object(self.classification),
                "embedding_output": self.embedding_output, "vote_output": self.vote_output,
                "name": self.name, "reduction": self.reduction}


def combined_objective(omega: float = 0.1, margin: float = 0.2, mining: str = "violating",
                       distance: str = "squared_l2", gather_across_replicas: bool = False,
                       embedding_output: str = "embedding", vote_output: str = "vote"):
    """(losses, loss_weights) dicts for `model.compile` realising eq 2.5 on a two-output model
    (the components of `CombinedObjective`)."""
    objective = CombinedObjective(omega, margin, mining, distance, gather_across_replicas,
                                  embedding_output=embedding_output, vote_output=vote_output)
    return objective.losses, objective.loss_weights


def build_anchor_vote_model(embedding_model: keras.Model, num_classes: int, anchors_per_class: int = 3,
                            gamma: float = 5.0, embedding_output: str = "embedding",
                            vote_output: str = "vote", name: str = "triplet_anchor") -> keras.Model:
    """Two-output model {embedding_output: L2 embedding [B, D], vote_output: log p [B, N]} (Fig 2.7).

    `embedding_model` maps images to L2-normalised embeddings (e.g. `models.embedding.build_embedding_model`).
    """
    from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote

    inputs = keras.Input(shape=embedding_model.input_shape[1:], name="image")
    emb = embedding_model(inputs)
    emb = keras.layers.Identity(name=embedding_output)(emb)
    vote = AnchorSoftVote(num_classes, anchors_per_class, gamma, output_mode="log_probabilities",
                          name=vote_output)(emb)
    return keras.Model(inputs, {embedding_output: emb, vote_output: vote}, name=name)
