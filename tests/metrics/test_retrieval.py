import numpy as np
import pytest

from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote
from finegrain_tf.losses.hard_negative import (hard_negative_labels, merge_with_hard_negatives,
                                               num_outputs, predict_real_classes, real_class_logits)
from finegrain_tf.metrics.retrieval import (recall_at_k, soft_vote_accuracy, soft_vote_scores,
                                            triplet_accuracy)


def test_soft_vote_scores_match_layer_and_accuracy():
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(3, 2, 4)).astype(np.float32)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    layer = AnchorSoftVote(3, 2, 2.0)
    layer.build((None, 4))
    layer.set_anchors(anchors)
    p = soft_vote_scores(x, anchors, 2.0)
    np.testing.assert_allclose(p, layer(x).numpy(), rtol=1e-5, atol=1e-6)
    labels = p.argmax(1)
    assert soft_vote_accuracy(x, labels, anchors, 2.0) == 1.0
    assert soft_vote_accuracy(x, (labels + 1) % 3, anchors, 2.0) == 0.0
    assert np.all(np.isfinite(soft_vote_scores(x * 10, anchors, 1e4)))
    with pytest.raises(ValueError, match=r"\(3, 8\)"):
        soft_vote_scores(x, np.zeros((3, 8)), 1.0)


def test_recall_at_k_closed_form():
    # 1-D points: 0, 1 (class 0); 0.4, 5 (class 1)
    x = np.array([[0.0], [1.0], [0.4], [5.0]])
    y = np.array([0, 0, 1, 1])
    r = recall_at_k(x, y, ks=(1, 2, 3))
    # nearest lists: 0 -> 2,1,3 ; 1 -> 2,0,3 ; 2 -> 0,1,3 ; 3 -> 1,2,0
    # first same-class rank: 0: 1 ; 1: 1 ; 2: 2 ; 3: 1
    assert r == {1: 0.0, 2: 0.75, 3: 1.0}
    # gallery 0.4 (class 1), 5 (class 0): both class-0 queries see 0.4 first, 5 second.
    g = recall_at_k(x[:2], y[:2], gallery_embeddings=x[2:], gallery_labels=np.array([1, 0]), ks=(1, 2))
    assert g == {1: 0.0, 2: 1.0}
    g = recall_at_k(x[:2], y[:2], gallery_embeddings=x[2:], gallery_labels=np.array([0, 1]), ks=(1,))
    assert g == {1: 1.0}
    with pytest.raises(ValueError):
        recall_at_k(x, y, ks=(0,))


def test_triplet_accuracy():
    q = np.zeros((4, 2))
    a = np.array([[1, 0], [3, 0], [1, 0], [2, 0]], float)
    b = np.array([[2, 0], [1, 0], [2, 0], [0, 2]], float)
    closer = np.array([0, 1, 1, 0])  # right, right, wrong, tie
    assert triplet_accuracy(q, a, b, closer) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    with pytest.raises(ValueError, match="closer"):
        triplet_accuracy(q, a, b, [0, 1, 2, 0])


def test_hard_negative_baselines():
    assert num_outputs(5, "hns") == 6 and num_outputs(5, "hnm") == 10
    np.testing.assert_array_equal(hard_negative_labels([0, 3], 5, "hns"), [5, 5])
    np.testing.assert_array_equal(hard_negative_labels([0, 3], 5, "hnm"), [5, 8])
    merged, mask = merge_with_hard_negatives([1, 2], [4], 5, "hnm")
    np.testing.assert_array_equal(merged, [1, 2, 9])
    np.testing.assert_array_equal(mask, [False, False, True])
    logits = np.array([[0.1, 0.2, 5.0], [0.3, 0.1, 9.0]], np.float32)  # 2 real classes + HNS column
    np.testing.assert_array_equal(predict_real_classes(logits, 2), [1, 0])
    assert real_class_logits(logits, 2).shape == (2, 2)
    with pytest.raises(ValueError, match="'hnx'"):
        num_outputs(3, "hnx")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        hard_negative_labels([7], 5, "hnm")
