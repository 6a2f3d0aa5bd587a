"""Bad inputs to the losses (issue 11's battery): each case asserts the specific error or NaN."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from finegrain_tf.losses import (AnchorVoteLoss, ClassBalancedLoss, ContrastiveLoss,  # noqa: E402
                                 TripletLoss, effective_number)

COUNTS = [50, 20, 5, 2, 1]
PAIRS = np.random.RandomState(0).normal(size=(3, 2, 4)).astype(np.float32)
LOGITS = np.random.RandomState(1).normal(size=(4, 5)).astype(np.float32)
PROBS = tf.nn.softmax(LOGITS).numpy()

EAGER_CASES = [
    (lambda: ContrastiveLoss()(np.array([1, 0, 2]), PAIRS), "must be 0 .* or 1 .*, got 2.0"),
    (lambda: ContrastiveLoss()(np.array([1, -1, 0]), PAIRS), "got -1.0"),
    (lambda: ContrastiveLoss()(np.array([1, 0.5, 0]), PAIRS), "got 0.5"),
    (lambda: ContrastiveLoss()(np.array([1, 0]), np.zeros((2, 3, 4), np.float32)),
     r"\[B, 2, D\] \(the two embeddings of each pair\), got rank 3 shape \(2, 3, 4\)"),
    (lambda: ContrastiveLoss(margin=-1.0), "margin must be >= 0"),
    (lambda: ClassBalancedLoss(COUNTS)(np.eye(6, dtype=np.float32)[:4], LOGITS),
     "one-hot targets of width 6 but y_pred has 5 classes"),
    (lambda: ClassBalancedLoss(COUNTS)(np.eye(4, dtype=np.float32), LOGITS),
     "one-hot targets of width 4 but y_pred has 5 classes"),
    (lambda: ClassBalancedLoss(COUNTS)(np.array([0, 1, 2, 3]), np.zeros((4, 6), np.float32)),
     "y_pred has 6 classes but samples_per_class has 5"),
    (lambda: ClassBalancedLoss(COUNTS, loss_type="focal")(np.array([0, 1, 9, 3]), LOGITS),
     "label 9 is outside"),
    (lambda: ClassBalancedLoss([3, 0, 2]), r"samples_per_class\[1\] = 0"),
    (lambda: ClassBalancedLoss(COUNTS, beta=1.0), "beta must be a number in"),
    (lambda: ClassBalancedLoss(COUNTS, gamma=float("nan")), "gamma must be a number >= 0"),
    (lambda: effective_number(COUNTS, float("nan")), "beta must be a number in"),
    (lambda: TripletLoss(mining="hardest"), "'hardest'"),
    (lambda: TripletLoss(margin=-0.1), "margin must be >= 0"),
    (lambda: AnchorVoteLoss()(np.arange(4), PROBS), "received probabilities"),
    (lambda: AnchorVoteLoss(from_logits=False)(np.arange(4), LOGITS), r"received values outside \[0, 1\]"),
]


@pytest.mark.parametrize("call, message", EAGER_CASES)
def test_refused_with_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


GRAPH_CASES = [
    (lambda y, z: ContrastiveLoss()(y, z), np.array([1, 0, 2], np.float32), PAIRS, "pair labels must be"),
    (lambda y, z: AnchorVoteLoss()(y, z), np.arange(4), PROBS, "received probabilities"),
    (lambda y, z: ClassBalancedLoss(COUNTS, loss_type="sigmoid")(y, z), np.array([0, 1, 7, 2]), LOGITS,
     "num_classes"),
]


@pytest.mark.parametrize("fn, y, z, message", GRAPH_CASES)
def test_refused_inside_tf_function(fn, y, z, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        tf.function(fn)(tf.constant(y), tf.constant(z))


@pytest.mark.parametrize("fn, y, z, message", GRAPH_CASES)
def test_nan_under_xla(fn, y, z, message):
    # XLA compiles assertions out: the bad batch must surface as NaN, never as a plausible number.
    out = tf.function(fn, jit_compile=True)(tf.constant(y), tf.constant(z))
    assert np.isnan(float(out))


@pytest.mark.parametrize("mining", ["violating", "all", "semi_hard", "hard"])
def test_triplet_nan_embeddings_give_nan(mining):
    emb = np.random.RandomState(2).normal(size=(6, 3)).astype(np.float32)
    emb[2, 1] = np.nan
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert np.isnan(float(TripletLoss(mining=mining)(labels, emb)))
    assert np.isnan(float(tf.function(TripletLoss(mining=mining))(labels, emb)))
