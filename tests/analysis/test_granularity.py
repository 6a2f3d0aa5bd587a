"""Granularity measures (seed 000 §6.2) against naive Python loops in float64 at 1e-9."""

import math

import numpy as np
import pytest
import sklearn.metrics

from finegrain_tf.analysis.dataset_granularity import granularity, granularity_per_sample, medoid_indices

from finegrain_tf.analysis import dataset_granularity as gmod  # noqa: E402

# ---------------------------------------------------------------- naive references (explicit loops)


def naive_dist(x, metric="euclidean"):
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if metric == "euclidean":
                d[i, j] = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j])))
            elif metric == "sqeuclidean":
                d[i, j] = sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j]))
            elif metric == "cosine":
                num = sum(float(a) * float(b) for a, b in zip(x[i], x[j]))
                ni = math.sqrt(sum(float(a) ** 2 for a in x[i]))
                nj = math.sqrt(sum(float(b) ** 2 for b in x[j]))
                d[i, j] = max(0.0, 1.0 - num / (ni * nj))
    return d


def naive_a_b(d, y, i):
    same = [d[i, j] for j in range(len(y)) if y[j] == y[i] and j != i]
    a = sum(same) / len(same)
    b = math.inf
    for c in sorted(set(y)):
        if c == y[i]:
            continue
        members = [d[i, j] for j in range(len(y)) if y[j] == c]
        b = min(b, sum(members) / len(members))
    return a, b


def naive_medoids(d, y):
    med = {}
    for c in sorted(set(y)):
        members = [j for j in range(len(y)) if y[j] == c]
        best, best_sum = None, math.inf
        for j in members:
            s = sum(d[j, q] for q in members)
            if s < best_sum:
                best, best_sum = j, s
        med[c] = best
    return med


def naive_measure(d, y, measure):
    n = len(y)
    y = list(y)
    k = len(set(y))
    total = 0.0
    med = naive_medoids(d, y) if measure in ("rsm", "rankm") else None
    for i in range(n):
        if measure == "rs":
            a, b = naive_a_b(d, y, i)
            total += a / b
        elif measure == "silhouette":
            a, b = naive_a_b(d, y, i)
            total += (b - a) / max(a, b)
        elif measure == "rsm":
            own = d[i, med[y[i]]]
            other = min(d[i, med[c]] for c in med if c != y[i])
            total += own / other
        elif measure == "rankm":
            own = d[i, med[y[i]]]
            rank = 1 + sum(1 for c in med if c != y[i] and d[i, med[c]] <= own)
            total += k / (k - 1) * (1 - 1 / rank)
        elif measure == "rank":
            others = [j for j in range(n) if j != i]
            pos = [j for j in others if y[j] == y[i]]
            ap = 0.0
            for p in pos:
                r_ij = sum(1 for q in others if d[i, q] <= d[i, p])  # rank among all others
                j_ij = sum(1 for q in pos if d[i, q] <= d[i, p])  # rank among classmates
                ap += j_ij / r_ij
            ap /= len(pos)
            total += n / (n - 1) * (1 - ap)
    return total / n


def random_data(seed, n=30, k=4, dim=5):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), np.arange(k), rng.integers(0, k, n - 2 * k)])
    rng.shuffle(y)
    x = rng.normal(size=(n, dim)) + 0.8 * rng.normal(size=(k, dim))[y]
    return x, y


MEASURES = ["rs", "rsm", "rank", "rankm", "silhouette"]


# ---------------------------------------------------------------- against naive loops


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_against_naive_loops(measure, metric):
    for seed in range(2):
        x, y = random_data(seed)
        want = naive_measure(naive_dist(x, metric), y, measure)
        got = granularity(x, y, measure=measure, metric=metric)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("measure", MEASURES)
def test_precomputed_matches_features(measure):
    x, y = random_data(3, n=25, k=3)
    d = naive_dist(x)
    assert granularity(d, y, measure, metric="precomputed") == pytest.approx(
        granularity(x, y, measure), rel=1e-9)
    assert granularity(d, y, measure, metric="precomputed") == pytest.approx(
        naive_measure(d, y, measure), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("measure", MEASURES)
def test_rank_ties_against_naive(measure):
    # Integer distances with many ties exercise the pessimistic tie rule and the medoid tie-break.
    rng = np.random.default_rng(7)
    n = 14
    d = rng.integers(1, 4, size=(n, n)).astype(float)
    d = np.triu(d, 1)
    d = d + d.T
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 2])
    assert granularity(d, y, measure, metric="precomputed") == pytest.approx(
        naive_measure(d, y, measure), rel=1e-12, abs=1e-12)


def test_silhouette_matches_sklearn():
    x, y = random_data(4, n=40)
    assert granularity(x, y, "silhouette") == pytest.approx(
        sklearn.metrics.silhouette_score(x, y), rel=1e-9)


def test_medoids_match_naive():
    x, y = random_data(5, n=30, k=5)
    classes, med = medoid_indices(x, y)
    want = naive_medoids(naive_dist(x), list(y))
    assert [want[c] for c in classes] == med.tolist()


def test_string_and_sparse_labels():
    x, y = random_data(6, n=20, k=3)
    names = np.array(["sparrow", "finch", "wren"])[y]
    sparse = np.array([10, -3, 999])[y]
    for m in MEASURES:
        ref = granularity(x, y, m)
        assert granularity(x, names, m) == pytest.approx(ref, rel=1e-12)
        assert granularity(x, sparse, m) == pytest.approx(ref, rel=1e-12)


def test_float32_features_are_computed_in_float64():
    x, y = random_data(8)
    x32 = x.astype(np.float32)
    want = naive_measure(naive_dist(x32.astype(np.float64)), y, "rsm")
    assert granularity(x32, y, "rsm") == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------- closed-form cases


def test_perfectly_separated_and_collapsed():
    # Tight, far-apart clusters: every sample is nearest to its own medoid/classmates.
    x = np.array([[0, 0], [0, 0.1], [10, 0], [10, 0.1], [0, 10], [0.1, 10]], dtype=float)
    y = np.array([0, 0, 1, 1, 2, 2])
    assert granularity(x, y, "rankm") == 0.0
    assert granularity(x, y, "rank") == 0.0
    assert granularity(x, y, "rs") == pytest.approx(0.1 / np.mean([10.0, np.hypot(10, 0.1)]), rel=0.2)
    assert granularity(x, y, "silhouette") > 0.98
    # Two classes sitting on the same two points: medoid ranks tie, pessimistic rank 2 for all.
    x2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    y2 = np.array([0, 0, 1, 1])
    assert granularity(x2, y2, "rankm") == 1.0


def test_range_rank_rankm():
    for seed in range(3):
        x, y = random_data(seed, n=30, k=5)
        for m in ("rank", "rankm"):
            assert 0.0 <= granularity(x, y, m) <= 1.0


def test_finer_labels_raise_granularity():
    # Coarse -> fine relabelling of well-mixed sub-classes increases RankM (the §6.3.2 oracle).
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [30, 0]], dtype=float)
    fine = np.repeat(np.arange(4), 25)
    coarse = fine // 2
    x = centers[coarse] + rng.normal(size=(100, 2)) + 0.5 * np.array([[0, 0], [1, 0], [0, 0], [1, 0]])[fine]
    for m in ("rs", "rsm", "rank", "rankm"):
        assert granularity(x, fine, m) > granularity(x, coarse, m)


# ---------------------------------------------------------------- chunking


@pytest.mark.parametrize("measure", MEASURES)
def test_chunked_equals_unchunked(measure):
    x, y = random_data(9, n=37, k=5)
    full = granularity_per_sample(x, y, measure, chunk_size=len(y))
    for cs in (1, 4, 11, None):
        part = granularity_per_sample(x, y, measure, chunk_size=cs)
        if measure in ("rank", "rankm"):
            np.testing.assert_array_equal(part, full)  # ranks are exact
        else:
            np.testing.assert_allclose(part, full, rtol=1e-12, atol=0)


def test_chunked_precomputed_bitwise_identical():
    x, y = random_data(10, n=23, k=3)
    d = naive_dist(x)
    for m in MEASURES:
        np.testing.assert_array_equal(
            granularity_per_sample(d, y, m, "precomputed", chunk_size=2),
            granularity_per_sample(d, y, m, "precomputed", chunk_size=None))


def test_block_budget_is_respected(monkeypatch):
    monkeypatch.setattr(gmod, "_BLOCK_ELEMENTS", 50)
    x, y = random_data(11, n=30)
    seen = []
    orig = gmod._Distances.block

    def spy(self, rows, cols, col_data=None):
        out = orig(self, rows, cols, col_data)
        seen.append(out.size)
        return out

    monkeypatch.setattr(gmod._Distances, "block", spy)
    vals = {m: granularity(x, y, m) for m in MEASURES}
    assert max(seen) <= 50
    monkeypatch.undo()
    for m in MEASURES:
        assert vals[m] == pytest.approx(granularity(x, y, m), rel=1e-12)


# ---------------------------------------------------------------- errors


def test_errors():
    x, y = random_data(12, n=12, k=3)
    with pytest.raises(ValueError, match="'nope'"):
        granularity(x, y, measure="nope")
    with pytest.raises(ValueError, match="'manhattan'"):
        granularity(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="single sample.*7"):
        granularity(np.vstack([x, x[:1]]), np.append(y, 7))
    with pytest.raises(ValueError, match="at least 2 classes"):
        granularity(x, np.zeros(len(y), int))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        granularity(bad, y)
    with pytest.raises(ValueError, match="12 entries"):
        granularity(x, y[:-1])
    with pytest.raises(ValueError, match="square"):
        granularity(x, y, metric="precomputed")
    with pytest.raises(ValueError, match="zero diagonal"):
        granularity(np.ones((12, 12)), y, metric="precomputed")
    with pytest.raises(ValueError, match="chunk_size"):
        granularity(x, y, chunk_size=0)
    zero = x.copy()
    zero[0] = 0
    with pytest.raises(ValueError, match="all-zero"):
        granularity(zero, y, metric="cosine")


def test_many_small_classes_single_thread_path():
    # >= 64 small classes: medoids are computed under a single-threaded BLAS limit.
    rng = np.random.default_rng(13)
    y = np.repeat(np.arange(70), 2 + np.arange(70) % 3)
    x = rng.normal(size=(y.size, 3))
    classes, med = medoid_indices(x, y)
    want = naive_medoids(naive_dist(x), list(y))
    assert [want[c] for c in classes] == med.tolist()
    d = naive_dist(x)
    for m in ("rsm", "rankm"):
        assert granularity(x, y, m) == pytest.approx(naive_measure(d, y, m), rel=1e-9)
