"""Every loss compiles with jit_compile=True (static shapes, no host round trips: the precondition of
the TPU path) and gives the eager values and gradients, at toy size."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from finegrain_tf.losses import (AnchorVoteLoss, BalancedSoftmaxLoss, ClassBalancedLoss,  # noqa: E402
                                 CombinedObjective, ContrastiveLoss, LDAMLoss, LogitAdjustedLoss,
                                 TripletLoss)

RNG = np.random.RandomState(0)
COUNTS = [40, 12, 5, 2]
LABELS = np.array([0, 1, 2, 3, 0, 1, 0, 2])
LOGITS = RNG.normal(size=(8, 4)).astype(np.float32) * 2
EMB = RNG.normal(size=(8, 5)).astype(np.float32)
PAIRS = RNG.normal(size=(8, 2, 5)).astype(np.float32)
TRIPLETS = RNG.normal(size=(8, 3, 5)).astype(np.float32)
PAIR_LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)

CASES = {"cb_" + t: (lambda t=t: ClassBalancedLoss(COUNTS, 0.99, t, 0.5), LABELS, LOGITS)
         for t in ("softmax", "sigmoid", "focal")}
CASES.update({"cb_focal_onehot": (lambda: ClassBalancedLoss(COUNTS, 0.99, "focal", 2.0),
                                  np.eye(4, dtype=np.float32)[LABELS], LOGITS),
              "logit_adjusted": (lambda: LogitAdjustedLoss(COUNTS), LABELS, LOGITS),
              "balanced_softmax": (lambda: BalancedSoftmaxLoss(COUNTS), LABELS, LOGITS),
              "ldam": (lambda: LDAMLoss(COUNTS), LABELS, LOGITS),
              "anchor_vote": (lambda: AnchorVoteLoss(), LABELS, LOGITS),
              "contrastive_hadsell": (lambda: ContrastiveLoss(1.0, "hadsell"), PAIR_LABELS, PAIRS),
              "contrastive_thesis": (lambda: ContrastiveLoss(1.0, "thesis"), PAIR_LABELS, PAIRS),
              "triplet_margin": (lambda: TripletLoss(0.2, mining="sampled"), np.zeros(8, np.float32), TRIPLETS)})
CASES.update({f"triplet_{m}_{d}": (lambda m=m, d=d: TripletLoss(0.2, m, d), LABELS, EMB)
              for m in ("violating", "all", "semi_hard", "hard") for d in ("squared_l2", "l2", "cosine")})


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_compiles_with_xla(name):
    make, y, z = CASES[name]
    loss = make()

    def value_and_grad(jit):
        @tf.function(jit_compile=jit)
        def step(y, z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                value = loss(y, z)
            return value, tape.gradient(value, z)
        value, grad = step(tf.constant(y), tf.constant(z))
        return float(value), grad.numpy()

    value, grad = value_and_grad(False)
    xla_value, xla_grad = value_and_grad(True)
    assert np.isfinite(value)
    assert xla_value == pytest.approx(value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(xla_grad, grad, rtol=1e-4, atol=1e-5)


def test_combined_objective_compiles_with_xla():
    objective = CombinedObjective(omega=0.3)
    y_pred = {"embedding": tf.constant(EMB), "vote": tf.constant(LOGITS)}
    eager = float(objective(LABELS, y_pred))
    compiled = tf.function(lambda y, e, v: objective(y, {"embedding": e, "vote": v}), jit_compile=True)
    assert float(compiled(tf.constant(LABELS), y_pred["embedding"], y_pred["vote"])) == \
        pytest.approx(eager, rel=1e-5)
