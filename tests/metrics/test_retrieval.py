import numpy as np
import pytest

from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote
from finegrain_tf.losses.hard_negative import (hard_negative_labels, merge_with_hard_negatives,
                                               num_outputs, predict_real_classes, real_class_logits)
from finegrain_tf import metrics
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


# ------------------------------------------------------------------------------------------------
# R-precision, MAP@R, precision@k, recall@k: hand-computed cases and a brute-force loop


def _naive_rankings(x, y, cosine=False):
    """For each item: (label, [labels of all other items by distance, ties -> smaller index])."""
    x = np.asarray(x, np.float64)
    if cosine:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for i in range(len(x)):
        others = []
        for j in range(len(x)):
            if j != i:
                d = 0.0
                for a, b in zip(x[i], x[j]):
                    d += (a - b) ** 2
                others.append((d, j))
        others.sort()
        out.append((y[i], [y[j] for _, j in others]))
    return out


def _naive_scores(x, y, k=None, cosine=False, per_class=False):
    per = []
    for label, ranked in _naive_rankings(x, y, cosine):
        big_r = sum(1 for r in ranked if r == label)
        if big_r == 0:
            continue
        rel = [1 if r == label else 0 for r in ranked]
        rp = sum(rel[:big_r]) / big_r
        ap = 0.0
        for i in range(big_r):
            if rel[i]:
                ap += sum(rel[:i + 1]) / (i + 1)
        ap /= big_r
        kk = min(k or 1, len(ranked))
        per.append((label, rp, ap, sum(rel[:kk]) / kk, float(any(rel[:kk]))))
    if per_class:
        classes = sorted({p[0] for p in per})
        return [float(np.mean([np.mean([p[m] for p in per if p[0] == c]) for c in classes])) for m in range(1, 5)]
    return [float(np.mean([p[m] for p in per])) for m in range(1, 5)]


def test_r_precision_map_at_r_hand_computed():
    # 1-D points 0, 1, 3, 4, 6 with classes 0, 1, 0, 1, 0. Rankings (ties -> smaller index):
    #   0: 1,2,3,4 rel 0,1,0,1 R=2 -> RP 1/2, AP@R (1/2)/2 = 1/4      1: 0,2,3,4 rel 0,0,1,0 R=1 -> 0, 0
    #   2: 3,1,0,4 rel 0,0,1,1 R=2 -> 0, 0                            3: 2,4,1,0 rel 0,0,1,0 R=1 -> 0, 0
    #   4: 3,2,1,0 rel 0,1,0,1 R=2 -> 1/2, 1/4
    x = np.array([[0.0], [1.0], [3.0], [4.0], [6.0]])
    y = np.array([0, 1, 0, 1, 0])
    assert metrics.r_precision(x, y) == pytest.approx(0.2)
    assert metrics.map_at_r(x, y) == pytest.approx(0.1)
    assert metrics.r_precision(x, y, average="class") == pytest.approx((1 / 3 + 0) / 2)
    assert metrics.map_at_r(x, y, average="class") == pytest.approx((1 / 6 + 0) / 2)
    assert metrics.precision_at_k(x, y, ks=(1, 2)) == pytest.approx({1: 0.0, 2: 0.2})
    assert recall_at_k(x, y, ks=(1, 2)) == pytest.approx({1: 0.0, 2: 0.4})
    assert isinstance(metrics.r_precision(x, y), float) and isinstance(metrics.map_at_r(x, y), float)


def test_ties_go_to_the_smaller_index_and_singletons_are_left_out():
    # item 0 is at distance 1 from item 1 (other class) and item 2 (same class): item 1 ranks first.
    # item 1 is alone in its class and is left out: RP = MAP@R = (0 + 1) / 2.
    x = np.array([[0.0], [-1.0], [1.0]])
    y = np.array([0, 1, 0])
    assert metrics.r_precision(x, y) == pytest.approx(0.5)
    assert metrics.map_at_r(x, y) == pytest.approx(0.5)
    # the same points with the tie resolved the other way (swap items 1 and 2): RP = 1
    assert metrics.r_precision(x[[0, 2, 1]], y[[0, 2, 1]]) == pytest.approx(1.0)


def test_perfect_and_worst_embeddings():
    x = np.repeat(np.eye(4) * 10, 3, axis=0) + np.random.default_rng(0).normal(0, 0.1, (12, 4))
    y = np.repeat(np.arange(4), 3)
    assert metrics.r_precision(x, y) == 1.0 and metrics.map_at_r(x, y) == 1.0
    report = metrics.retrieval_report(x, y, ks=(1, 2))
    assert report["recall@1"] == 1.0 and report["precision@2"] == 1.0
    assert report["nmi"] == pytest.approx(1.0) and report["ami"] == pytest.approx(1.0)
    # every item's nearest neighbour is of the other class (R = 1 for all): 0 <-> 2 and 1 <-> 3
    x = np.array([[0.0], [10.0], [1.0], [11.0]])
    y = np.array([0, 0, 1, 1])
    assert metrics.r_precision(x, y) == 0.0
    assert metrics.map_at_r(x, y) == 0.0


@pytest.mark.parametrize("seed,cosine", [(0, False), (1, False), (2, True)])
def test_metrics_match_brute_force_loop(seed, cosine):
    rng = np.random.default_rng(seed)
    # Euclidean: integer coordinates give many exact distance ties, which the tie rule must settle.
    # Cosine: continuous values (normalising makes mathematically equal distances differ in the last bit).
    x = rng.normal(size=(40, 3)) if cosine else rng.integers(-2, 3, size=(40, 3)).astype(np.float64)
    y = rng.integers(0, 6, size=40)
    y[-1] = 99  # a singleton class
    distance = "cosine" if cosine else "euclidean"
    for per_class in (False, True):
        average = "class" if per_class else "query"
        for k in (1, 3, 8):
            rp, ap, prec, rec = _naive_scores(x, y, k, cosine, per_class)
            assert metrics.precision_at_k(x, y, ks=(k,), distance=distance, average=average)[k] == \
                pytest.approx(prec, abs=1e-12)
            assert recall_at_k(x, y, ks=(k,), distance=distance, average=average)[k] == \
                pytest.approx(rec, abs=1e-12)
        assert metrics.r_precision(x, y, distance=distance, average=average) == pytest.approx(rp, abs=1e-12)
        assert metrics.map_at_r(x, y, distance=distance, average=average) == pytest.approx(ap, abs=1e-12)


def test_blocked_ranking_equals_one_block():
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(50, 4)).astype(np.float64)
    full = metrics.nearest_neighbours(x, None, 10)
    blocked = np.concatenate([metrics.nearest_neighbours(x[s:s + 7], x, 10, chunk=3, query_offset=s)
                              for s in range(0, 50, 7)])
    np.testing.assert_array_equal(full, blocked)
    d = metrics.squared_distances(x, x)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(full, np.argsort(d, axis=1, kind="stable")[:, :10])


def test_cluster_scores_match_sklearn_on_separated_and_mixed_data():
    from sklearn.metrics import adjusted_mutual_info_score

    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 10)
    separated = np.eye(3)[y] * 20 + rng.normal(0, 0.1, (30, 3))
    assert metrics.cluster_scores(separated, y) == pytest.approx({"nmi": 1.0, "ami": 1.0})
    noise = rng.normal(size=(30, 3))
    scores = metrics.cluster_scores(noise, y, seed=0)
    assert 0.0 <= scores["nmi"] < 0.5 and scores["ami"] < 0.3
    assert adjusted_mutual_info_score(y, y) == 1.0
