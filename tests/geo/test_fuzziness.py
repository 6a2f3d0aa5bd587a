"""Table 5.7's fuzziness statistics against a naive numpy float64 loop."""

import numpy as np
import pytest

from finegrain_tf.analysis.fuzziness import fuzziness_statistics, plot_histograms, ranking_violations


def _naive(emb, left, right, labels):
    d = [float(np.sqrt(((emb[i] - emb[j]) ** 2).sum())) for i, j in zip(left, right)]
    pos = [(i, x) for i, x, y in zip(left, d, labels) if y == 1]
    neg = [(i, x) for i, x, y in zip(left, d, labels) if y == 0]
    violations = triplets = 0
    for anchor, dp in pos:
        for other, dn in neg:
            if anchor == other:
                triplets += 1
                violations += dp > dn
    dpos, dneg = [x for _, x in pos], [x for _, x in neg]
    return {"median_positive_distance": np.median(dpos), "median_negative_distance": np.median(dneg),
            "mean_positive_distance": np.mean(dpos), "mean_negative_distance": np.mean(dneg),
            "triplets": triplets, "violations": violations,
            "ranking_violations_percent": 100.0 * violations / triplets}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_loop(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(30, 5))
    emb[5] = emb[6]  # a tie: a distance-0 pair
    left = rng.integers(0, 12, 150)
    right = rng.integers(0, 30, 150)
    labels = rng.integers(0, 2, 150)
    # Ties between a positive and a negative distance of one anchor are not violations.
    left[:2], right[:2], labels[:2] = [3, 3], [5, 6], [1, 0]
    got = fuzziness_statistics(emb, left, right, labels)
    want = _naive(emb, left, right, labels)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12)


def test_closed_forms():
    emb = np.array([[0.0], [1.0], [3.0], [10.0]])
    # Anchor 0: positive at distance 1, negatives at 3 and 10 -> no violation.
    s = fuzziness_statistics(emb, [0, 0, 0], [1, 2, 3], [1, 0, 0])
    assert s["ranking_violations_percent"] == 0.0 and s["triplets"] == 2
    # Swap the roles: every triplet is a violation.
    s = fuzziness_statistics(emb, [0, 0, 0], [3, 1, 2], [1, 0, 0])
    assert s["ranking_violations_percent"] == 100.0
    assert s["median_negative_distance"] == 2.0 and s["mean_positive_distance"] == 10.0
    sq = fuzziness_statistics(emb, [0, 0], [2, 3], [1, 0], metric="squared")
    assert sq["median_positive_distance"] == 9.0 and sq["median_negative_distance"] == 100.0
    assert ranking_violations([], [], [1], [2.0]) == (0, 0)


def test_histogram_png(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 4))
    path = plot_histograms(str(tmp_path / "h.png"), emb, np.arange(10), np.arange(10, 20),
                           np.arange(10) % 2)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
