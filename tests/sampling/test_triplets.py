"""Quasi-online triplet sampling against naive float64 references written with explicit loops."""

import math

import numpy as np
import pytest

from finegrain_tf.sampling import QuasiOnlineTripletSampler, local_positive_neighbours, sample_triplets


def data(n_per=12, classes=4, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per)
    x = rng.normal(size=(len(labels), dim)).astype(np.float32) * 0.6
    x += 0.4 * rng.normal(size=(classes, dim)).astype(np.float32)[labels]
    return x, labels


def sq(a, b):
    return float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def naive_local_region(x, labels, i, fraction):
    """Same-class items (i excluded) ranked by distance; the nearest ceil(fraction * (n_c - 1))."""
    same = [j for j in range(len(labels)) if labels[j] == labels[i] and j != i]
    ranked = sorted(same, key=lambda j: (sq(x[i], x[j]), j))
    k = max(1, math.ceil(fraction * len(same)))
    return ranked[:k]


def naive_violators(x, labels, a, p, margin):
    return [j for j in range(len(labels))
            if labels[j] != labels[a] and sq(x[a], x[j]) < sq(x[a], x[p]) + margin]


@pytest.mark.parametrize("fraction", [0.25, 0.6, 1.0])
def test_local_neighbours_match_naive_reference(fraction):
    x, labels = data()
    nb = local_positive_neighbours(x, labels, fraction)
    for i in range(len(labels)):
        want = naive_local_region(x, labels, i, fraction)
        assert nb[i].tolist() == want  # nearest first, distinct distances here


def test_local_neighbours_with_duplicates_exclude_self():
    x = np.zeros((4, 2), np.float32)  # all identical: self may not come first among ties
    nb = local_positive_neighbours(x, np.zeros(4, np.int64), 1.0)
    for i, v in enumerate(nb):
        assert sorted(v.tolist()) == [j for j in range(4) if j != i]
    lone = local_positive_neighbours(np.eye(3, dtype=np.float32), np.array([0, 1, 1]), 0.5)
    assert len(lone[0]) == 0 and lone[1].tolist() == [2]


@pytest.mark.parametrize("fraction", [0.25, 0.6, 1.0])
def test_positives_inside_local_region(fraction):
    x, labels = data()
    t = sample_triplets(x, labels, positive_fraction=fraction, margin=0.5, triplets_per_anchor=3, seed=1)
    assert len(t) > 0
    for a, p in zip(t.anchors, t.positives):
        assert p in naive_local_region(x, labels, a, fraction)


def test_violating_negatives_match_reference():
    x, labels = data()
    for margin in (0.1, 0.5):
        t = sample_triplets(x, labels, 0.6, margin, triplets_per_anchor=2, seed=3, block_size=7)
        assert len(t) > 0 and not t.human.any()
        for a, p, n in zip(t.anchors, t.positives, t.negatives):
            assert n in naive_violators(x, labels, a, p, margin)
    # Well separated classes and a small margin: nothing violates, nothing is kept.
    sep = np.eye(4, 6, dtype=np.float32)[labels] * 10 + 0.01 * x
    assert len(sample_triplets(sep, labels, 0.6, 0.2)) == 0
    assert len(sample_triplets(sep, labels, 0.6, 0.2, negatives="hardest")) == 0
    # Random negatives (Triplet-Naive) keep everything.
    naive = sample_triplets(sep, labels, 1.0, 0.2, negatives="random", seed=0)
    assert len(naive) == len(labels) and np.all(labels[naive.negatives] != labels[naive.anchors])


def test_anchors_without_violator_are_dropped_exactly():
    x, labels = data()
    t = sample_triplets(x, labels, 1.0, 0.3, seed=5)
    # Re-derive which (anchor, positive) pairs had a violator: every kept one has, and the number
    # kept equals the number of anchors whose drawn positive admits one (same seed -> same positives).
    random_round = sample_triplets(x, labels, 1.0, 0.3, negatives="random", seed=5)
    assert np.array_equal(random_round.anchors, np.arange(len(labels)))
    has = [bool(naive_violators(x, labels, a, p, 0.3))
           for a, p in zip(random_round.anchors, random_round.positives)]
    assert len(t) == sum(has)


def test_hardest_negative_matches_reference():
    x, labels = data()
    margin = 0.4
    t = sample_triplets(x, labels, 1.0, margin, negatives="hardest", seed=2, block_size=5)
    assert len(t) > 0
    for a, p, n in zip(t.anchors, t.positives, t.negatives):
        others = [j for j in range(len(labels)) if labels[j] != labels[a]]
        best = min(others, key=lambda j: (sq(x[a], x[j]), j))
        assert n == best and sq(x[a], x[n]) < sq(x[a], x[p]) + margin


def test_negatives_uniform_among_violators():
    # Anchor 0 with one positive; the four negatives all violate: each should be chosen ~1/4.
    x = np.array([[0, 0], [1, 0], [0.5, 0], [0, 0.5], [-0.5, 0], [0, -0.5]], np.float32)
    labels = np.array([0, 0, 1, 1, 1, 1])
    picks = []
    for s in range(200):
        t = sample_triplets(x, labels, 1.0, 0.2, seed=s)
        picks += [n for a, n in zip(t.anchors, t.negatives) if a == 0]
    freq = np.bincount(picks, minlength=6)[2:] / len(picks)
    np.testing.assert_allclose(freq, 0.25, atol=0.1)


@pytest.mark.parametrize("negatives,block_size", [("random", 4096), ("violating", 4096), ("violating", 3)])
def test_negatives_are_drawn_independently_per_anchor(negatives, block_size):
    # 300 anchors of class 0, 5 candidate negatives (class 1) spread over the pool, all acceptable
    # (margin 100 makes every one violate). Independent uniform draws give each candidate 60 +- 7
    # of the 300 anchors in ONE round. A draw that is uniform per anchor but shared across anchors
    # (the first acceptable item of one random order) gives one candidate almost all of them, so
    # training pushes away a handful of images and learns nothing about the classes.
    labels = np.zeros(305, np.int64)
    candidates = np.array([3, 70, 150, 222, 301])
    labels[candidates] = 1
    x = np.random.default_rng(0).normal(size=(305, 4)).astype(np.float32) * 0.01
    t = sample_triplets(x, labels, 1.0, 100.0, negatives=negatives, seed=1, block_size=block_size)
    from_class_0 = labels[t.anchors] == 0
    assert from_class_0.sum() == 300
    counts = np.array([np.sum(t.negatives[from_class_0] == c) for c in candidates])
    assert counts.sum() == 300 and counts.min() >= 30 and counts.max() <= 90, counts


def test_human_hard_negative_mix_ratio():
    x, labels = data()
    rng = np.random.default_rng(0)
    hn_classes = np.repeat(np.arange(4), 3)
    hn_x = rng.normal(size=(12, 6)).astype(np.float32)
    t = sample_triplets(x, labels, 0.6, 0.5, triplets_per_anchor=2, hard_negative_embeddings=hn_x,
                        hard_negative_classes=hn_classes, seed=2)
    n_class, n_human = int((~t.human).sum()), int(t.human.sum())
    assert n_class > 0 and n_human == n_class  # same number as class negatives (§2.4.3)
    n = len(labels)
    assert np.all(t.negatives[t.human] >= n) and np.all(t.negatives[~t.human] < n)
    assert np.all(hn_classes[t.negatives[t.human] - n] == labels[t.anchors[t.human]])
    pairs = set(zip(t.anchors[~t.human], t.positives[~t.human]))
    assert set(zip(t.anchors[t.human], t.positives[t.human])) <= pairs
    only0 = sample_triplets(x, labels, 0.6, 0.5, hard_negative_embeddings=hn_x[:3],
                            hard_negative_classes=hn_classes[:3], seed=2)
    assert np.all(labels[only0.anchors[only0.human]] == 0)
    f = sample_triplets(x, labels, 0.6, 0.5, hard_negative_embeddings=hn_x, hard_negative_classes=hn_classes,
                        filter_human_negatives=True, seed=2)
    for a, p, m in zip(f.anchors[f.human], f.positives[f.human], f.negatives[f.human]):
        assert sq(x[a], hn_x[m - n]) < sq(x[a], x[p]) + 0.5 + 1e-5


def test_every_batch_mixes_human_negatives_one_to_one():
    x, labels = data()
    hn_x = np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32)
    sampler = QuasiOnlineTripletSampler(labels, margin=0.5, batch_size=10, refresh_every=4,
                                        hard_negative_classes=np.repeat(np.arange(4), 2), seed=0)
    sampler.refresh(x, hn_x)
    n = len(labels)
    for _ in range(30):
        b = sampler.next_batch()
        assert b.shape == (10, 3)
        assert int((b[:, 2] >= n).sum()) == 5  # 1:1 in every batch
    # Odd batch: the extra triplet is a class negative.
    sampler.batch_size = 7
    assert int((sampler.next_batch()[:, 2] >= n).sum()) == 3


def test_quasi_online_refresh_cycle():
    x, labels = data()
    calls = []

    def embed_fn():
        calls.append(1)
        return x + 0.01 * len(calls)

    sampler = QuasiOnlineTripletSampler(labels, batch_size=8, refresh_every=5, margin=0.5, seed=0)
    batches = list(sampler.run(embed_fn, total_steps=12))
    assert len(batches) == 12 and len(calls) == 3 and sampler.rounds == 3
    for b in batches:
        assert b.shape == (8, 3)
        assert np.all(labels[b[:, 0]] == labels[b[:, 1]]) and np.all(labels[b[:, 0]] != labels[b[:, 2]])
    # Each pass over a refresh's triplets visits every triplet before repeating one.
    sampler.refresh(x)
    table = {tuple(r) for r in sampler.triplets.as_array()}
    seen = [tuple(r) for _ in range(len(table) // 8) for r in sampler.next_batch()]
    assert len(set(seen)) == len(seen) and set(seen) <= table


def test_fallback_to_random_negatives_when_nothing_violates():
    x, labels = data()
    sep = np.eye(4, 6, dtype=np.float32)[labels] * 10 + 0.01 * x
    sampler = QuasiOnlineTripletSampler(labels, margin=0.2, batch_size=4)
    t = sampler.refresh(sep)
    assert sampler.fallback_rounds == 1 and len(t) == len(labels)
