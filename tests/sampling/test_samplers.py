"""Sampler invariants: local positives, margin-violating negatives, human hard-negative mix, P x K, pairs."""

import json
import math

import numpy as np
import pytest

from finegrain_tf.sampling import (PKBatchSampler, QuasiOnlineTripletSampler, load_hard_negatives,
                                   local_positive_neighbours, sample_pairs, sample_triplets)


def data(n_per=12, classes=4, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per)
    x = rng.normal(size=(len(labels), dim)).astype(np.float32) * 0.6
    x += 0.4 * rng.normal(size=(classes, dim)).astype(np.float32)[labels]
    return x, labels


def sq(a, b):
    return float(np.sum((np.asarray(a, np.float64) - b) ** 2))


@pytest.mark.parametrize("fraction", [0.25, 0.6, 1.0])
def test_positives_inside_local_region(fraction):
    x, labels = data()
    t = sample_triplets(x, labels, positive_fraction=fraction, margin=0.5, triplets_per_anchor=3, seed=1)
    assert len(t) > 0
    k = math.ceil(fraction * 11)
    for a, p in zip(t.anchors, t.positives):
        assert labels[p] == labels[a] and p != a
        same = [j for j in range(len(labels)) if labels[j] == labels[a] and j != a]
        ranked = sorted(same, key=lambda j: (sq(x[a], x[j]), j))
        radius = sq(x[a], x[ranked[k - 1]])
        assert sq(x[a], x[p]) <= radius + 1e-5


def test_local_neighbour_lists():
    x, labels = data(n_per=5, classes=2)
    nb = local_positive_neighbours(x, labels, 0.5)
    assert all(len(v) == 2 for v in nb)  # ceil(0.5 * 4)
    for i, v in enumerate(nb):
        same = [j for j in range(10) if labels[j] == labels[i] and j != i]
        want = sorted(same, key=lambda j: sq(x[i], x[j]))[:2]
        assert sorted(v.tolist()) == sorted(want)
    with pytest.raises(ValueError, match="1.5"):
        local_positive_neighbours(x, labels, 1.5)


def test_every_kept_negative_violates_margin():
    x, labels = data()
    for margin in (0.1, 0.5):
        t = sample_triplets(x, labels, 0.6, margin, triplets_per_anchor=2, seed=3)
        assert len(t) > 0 and not t.human.any()
        for a, p, n in zip(t.anchors, t.positives, t.negatives):
            assert labels[n] != labels[a]
            assert sq(x[a], x[n]) < sq(x[a], x[p]) + margin + 1e-5
    # Well separated classes and a tiny margin: nothing violates, nothing is kept.
    sep = np.eye(4, 6, dtype=np.float32)[labels] * 10 + 0.01 * x
    assert len(sample_triplets(sep, labels, 0.6, 0.2)) == 0
    # Random negatives (Triplet-Naive) keep everything.
    naive = sample_triplets(sep, labels, 1.0, 0.2, negatives="random", seed=0)
    assert len(naive) == len(labels) and np.all(labels[naive.negatives] != labels[naive.anchors])


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
    # each human negative was proposed for the anchor's class
    assert np.all(hn_classes[t.negatives[t.human] - n] == labels[t.anchors[t.human]])
    # human triplets reuse the anchor/positive pairs of class-negative triplets
    pairs = set(zip(t.anchors[~t.human], t.positives[~t.human]))
    assert set(zip(t.anchors[t.human], t.positives[t.human])) <= pairs
    # classes without human negatives get none
    only0 = sample_triplets(x, labels, 0.6, 0.5, hard_negative_embeddings=hn_x[:3],
                            hard_negative_classes=hn_classes[:3], seed=2)
    assert np.all(labels[only0.anchors[only0.human]] == 0)
    # filtered human negatives all violate the margin
    f = sample_triplets(x, labels, 0.6, 0.5, hard_negative_embeddings=hn_x, hard_negative_classes=hn_classes,
                        filter_human_negatives=True, seed=2)
    for a, p, m in zip(f.anchors[f.human], f.positives[f.human], f.negatives[f.human]):
        assert sq(x[a], hn_x[m - n]) < sq(x[a], x[p]) + 0.5 + 1e-5


def test_quasi_online_refresh_cycle():
    x, labels = data()
    calls = []

    def embed_fn():
        calls.append(1)
        return x + 0.01 * len(calls)

    sampler = QuasiOnlineTripletSampler(labels, batch_size=8, refresh_every=5, margin=0.5, seed=0)
    batches = list(sampler.run(embed_fn, total_steps=12))
    assert len(batches) == 12 and len(calls) == 3 and sampler.rounds >= 3
    assert all(b.shape == (8, 3) for b in batches)
    for b in batches:
        assert np.all(labels[b[:, 0]] == labels[b[:, 1]]) and np.all(labels[b[:, 0]] != labels[b[:, 2]])
    with pytest.raises(ValueError, match="refresh"):
        next(QuasiOnlineTripletSampler(labels).batches(1))
    with pytest.raises(ValueError, match="'hardest'"):
        QuasiOnlineTripletSampler(labels, negatives="hardest")


def test_load_hard_negatives_csv_jsonl(tmp_path):
    csv_path = tmp_path / "hn.csv"
    csv_path.write_text("image,proposed_class\nimg/1.jpg,2\nimg/2.jpg,rose\n")
    hn = load_hard_negatives(str(csv_path), class_names=["daisy", "tulip", "rose"])
    assert hn.items == ["img/1.jpg", "img/2.jpg"] and hn.classes.tolist() == [2, 2]
    jl = tmp_path / "hn.jsonl"
    jl.write_text(json.dumps({"id": "a", "class": 1}) + "\n" + json.dumps({"path": "b", "label": 0}) + "\n")
    hn = load_hard_negatives(str(jl))
    assert hn.items == ["a", "b"] and hn.classes.tolist() == [1, 0] and len(hn) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("image,class\nx.jpg,lily\n")
    with pytest.raises(ValueError, match="'lily'"):
        load_hard_negatives(str(bad), class_names=["rose"])
    with pytest.raises(ValueError, match="not found"):
        load_hard_negatives(str(tmp_path / "missing.csv"))


def test_pk_batch_sampler():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 7 + [3] * 1 + [4] * 3)
    s = PKBatchSampler(labels, P=3, K=4, seed=0)
    for _ in range(20):
        b = s.sample()
        assert b.shape == (12,)
        groups = labels[b].reshape(3, 4)
        assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 3
        assert 3 not in groups  # single-image class never drawn
        assert all(len(set(b[labels[b] == c])) == min(4, (labels == c).sum()) or (labels == c).sum() < 4
                   for c in set(groups[:, 0]))
    with pytest.raises(ValueError, match="P=9"):
        PKBatchSampler(labels, P=9, K=2)


def test_sample_pairs():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    i, j, y = sample_pairs(labels, 200, positive_ratio=0.3, seed=0)
    assert len(i) == 200 and y.sum() == 60
    np.testing.assert_array_equal(labels[i] == labels[j], y == 1)
    assert np.all(i[y == 1] != j[y == 1])
    with pytest.raises(ValueError, match="1.2"):
        sample_pairs(labels, 4, positive_ratio=1.2)
