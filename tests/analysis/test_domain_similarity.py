"""EMD domain similarity and source selection (seed 000 §4.3) against an LP solve and naive loops."""

import math

import numpy as np
import pytest
from scipy.optimize import linprog

from finegrain_tf.analysis.emd_similarity import (
    SourceSelection, domain_similarity, emd_distance, per_class_similarity, plot_top_classes,
    read_class_list, select_source_classes, union_source_classes, write_class_list)

from finegrain_tf.analysis import emd_similarity as ds  # noqa: E402


def lp_emd(s, sc, t, tc):
    """EMD (eq. 4.2) as an explicit transportation LP solved by scipy's HiGHS."""
    m, n = len(s), len(t)
    a = np.asarray(sc, float) / np.sum(sc)
    b = np.asarray(tc, float) / np.sum(tc)
    cost = np.array([[math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(s[i], t[j])))
                      for j in range(n)] for i in range(m)])
    a_eq = []
    for i in range(m):
        row = np.zeros((m, n))
        row[i, :] = 1
        a_eq.append(row.ravel())
    for j in range(n):
        col = np.zeros((m, n))
        col[:, j] = 1
        a_eq.append(col.ravel())
    res = linprog(cost.ravel(), A_eq=np.array(a_eq), b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs", options={"primal_feasibility_tolerance": 1e-10,
                                           "dual_feasibility_tolerance": 1e-10})
    assert res.status == 0
    flow = res.x.reshape(m, n)
    return float(np.sum(flow * cost) / np.sum(flow))


def domains(seed, m=6, n=4, dim=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(m, dim)), rng.integers(1, 50, m), rng.normal(size=(n, dim)) + 0.5,
            rng.integers(1, 50, n))


@pytest.mark.parametrize("seed", range(5))
def test_emd_against_linprog(seed):
    s, sc, t, tc = domains(seed, m=3 + seed, n=2 + seed % 3)
    assert emd_distance(s, sc, t, tc) == pytest.approx(lp_emd(s, sc, t, tc), rel=1e-9, abs=1e-12)


def test_emd_flow_is_a_transport_plan():
    s, sc, t, tc = domains(11)
    value, flow = emd_distance(s, sc, t, tc, return_flow=True)
    np.testing.assert_allclose(flow.sum(axis=1), sc / sc.sum(), atol=1e-12)
    np.testing.assert_allclose(flow.sum(axis=0), tc / tc.sum(), atol=1e-12)
    assert value == pytest.approx(emd_distance(s, sc, t, tc), rel=1e-12)
    assert value == pytest.approx(lp_emd(s, sc, t, tc), rel=1e-9)


def test_emd_closed_forms():
    s, sc, t, tc = domains(1)
    assert emd_distance(s, sc, s, sc) == pytest.approx(0.0, abs=1e-12)  # identical domains
    # Shifting a domain by a vector moves all mass by its length.
    shift = np.array([3.0, 4.0, 0.0])
    assert emd_distance(s, sc, s + shift, sc) == pytest.approx(5.0, rel=1e-12)
    # Counts are normalised per domain: scaling them changes nothing.
    assert emd_distance(s, 7 * sc, t, 3 * tc) == pytest.approx(emd_distance(s, sc, t, tc), rel=1e-12)
    # One class against one class: the plain Euclidean distance.
    assert emd_distance(s[:1], [5], t[:1], [9]) == pytest.approx(np.linalg.norm(s[0] - t[0]), rel=1e-12)


def test_similarity_is_exp_minus_gamma_emd_and_ordered():
    s, sc, t, tc = domains(2)
    d = emd_distance(s, sc, t, tc)
    assert domain_similarity(s, sc, t, tc) == pytest.approx(math.exp(-0.01 * d), rel=1e-12)
    assert domain_similarity(s, sc, t, tc, gamma=0.5) == pytest.approx(math.exp(-0.5 * d), rel=1e-12)
    # Moving the target further away monotonically lowers the similarity.
    sims = [domain_similarity(s, sc, t + shift, tc) for shift in (0.0, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(sims, sims[1:]))
    assert 0 < sims[-1] < sims[0] <= 1


def test_min_count_drops_small_source_classes():
    s, sc, t, tc = domains(3)
    sc = np.array([300, 5, 250, 199, 200, 1000])
    keep = sc >= 200
    assert emd_distance(s, sc, t, tc, min_count=200) == pytest.approx(
        emd_distance(s[keep], sc[keep], t, tc), rel=1e-12)
    with pytest.raises(ValueError, match="min_count=5000"):
        emd_distance(s, sc, t, tc, min_count=5000)


def test_per_class_similarity_matches_single_class_emd():
    s, sc, t, tc = domains(4, m=7)
    want = [domain_similarity(s[i:i + 1], [1], t, tc) for i in range(len(s))]
    np.testing.assert_allclose(per_class_similarity(s, t, tc), want, rtol=1e-12)


def test_select_source_classes_order_and_ties():
    s, sc, t, tc = domains(5, m=9)
    s[7] = s[2]  # an exact tie: the lower index must come first
    sims = [domain_similarity(s[i:i + 1], [1], t, tc) for i in range(len(s))]
    sel = select_source_classes(s, sc, t, tc, k=9)
    assert isinstance(sel, SourceSelection) and len(sel) == 9
    want = sorted(range(len(s)), key=lambda i: (-sims[i], i))
    assert sel.indices.tolist() == want
    np.testing.assert_allclose(sel.similarities, [sims[i] for i in want], rtol=1e-12)
    assert np.all(np.diff(sel.similarities) <= 0)
    assert sel.indices.tolist().index(2) + 1 == sel.indices.tolist().index(7)
    top3 = select_source_classes(s, sc, t, tc, k=3)
    assert top3.indices.tolist() == want[:3]
    # min_count excludes classes but indices still refer to the full source domain.
    sc2 = np.array(sc)
    sc2[want[0]] = 1
    top = select_source_classes(s, sc2, t, tc, k=2, min_count=2)
    assert top.indices.tolist() == [i for i in want if sc2[i] >= 2][:2]


def test_selection_prefers_the_nearby_cluster():
    rng = np.random.default_rng(0)
    near = rng.normal(size=(5, 4)) * 0.1
    far = rng.normal(size=(5, 4)) * 0.1 + 20
    s = np.concatenate([far, near])
    sel = select_source_classes(s, np.ones(10), near[:3] + 0.01, [1, 2, 3], k=5)
    assert sorted(sel.indices.tolist()) == [5, 6, 7, 8, 9]


def test_union_and_class_list_roundtrip(tmp_path):
    a = SourceSelection(np.array([4, 1, 7]), np.array([0.9, 0.8, 0.7]))
    b = SourceSelection(np.array([7, 2, 4]), np.array([0.95, 0.5, 0.4]))
    ids = union_source_classes([a, b, [9, 1]])
    assert ids == [4, 1, 7, 2, 9]
    path = write_class_list(str(tmp_path / "sub" / "classes.txt"), ids)
    assert open(path).read() == "4\n1\n7\n2\n9\n"
    assert read_class_list(path) == ids
    (tmp_path / "bad.txt").write_text("3\nfoo\n")
    with pytest.raises(ValueError, match="'foo'"):
        read_class_list(str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="duplicates"):
        write_class_list(str(tmp_path / "x.txt"), [1, 1])


def test_plot_top_classes(tmp_path):
    s, sc, t, tc = domains(6, m=12)
    sels = {"birds": select_source_classes(s, sc, t, tc, k=5),
            "cars": select_source_classes(s, sc, t + 1, tc, k=5)}
    path = plot_top_classes(sels, str(tmp_path / "top.png"), class_names=[f"c{i}" for i in range(12)])
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_errors():
    s, sc, t, tc = domains(7)
    with pytest.raises(ValueError, match="D=3.*D=2"):
        emd_distance(s, sc, t[:, :2], tc)
    with pytest.raises(ValueError, match="source_counts must be 1-D with 6"):
        emd_distance(s, sc[:-1], t, tc)
    with pytest.raises(ValueError, match="-1"):
        emd_distance(s, np.r_[sc[:-1], -1], t, tc)
    bad = s.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        emd_distance(bad, sc, t, tc)
    with pytest.raises(ValueError, match="sum to 0"):
        emd_distance(s, sc, t, np.zeros(len(tc)))
    with pytest.raises(ValueError, match="gamma"):
        domain_similarity(s, sc, t, tc, gamma=0)
    with pytest.raises(ValueError, match="k must be"):
        select_source_classes(s, sc, t, tc, k=0)


def test_solver_failure_is_an_error(monkeypatch):
    import ot

    def fake_emd2(a, b, m, numItermax, log):
        return 0.0, {"warning": "numItermax reached before optimality"}

    monkeypatch.setattr(ot, "emd2", fake_emd2)
    s, sc, t, tc = domains(8)
    with pytest.raises(RuntimeError, match="numItermax"):
        ds.emd_distance(s, sc, t, tc)


def test_public_names():
    import finegrain_tf.analysis as fa

    s, sc, t, tc = domains(9)
    assert fa.emd_distance(s, sc, t, tc) == emd_distance(s, sc, t, tc)
    assert fa.domain_similarity(s, sc, t, tc) == domain_similarity(s, sc, t, tc)
    assert fa.select_source_classes(s, sc, t, tc, 2).indices.tolist() == \
        select_source_classes(s, sc, t, tc, 2).indices.tolist()
    x = np.vstack([s, t])
    y = np.r_[np.zeros(len(s), int), np.ones(len(t), int)]
    assert 0 <= fa.granularity(x, y) <= 1


def test_ground_distance_accuracy():
    rng = np.random.default_rng(10)
    s = rng.normal(size=(20, 7)) * 100 + 1000  # large norms
    t = np.vstack([s[:5] + 1e-7, rng.normal(size=(5, 7)) * 100 + 1000])  # near-duplicates
    want = np.array([[math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))) for b in t]
                     for a in s])
    np.testing.assert_allclose(ds.ground_distance(s, t), want, rtol=1e-9, atol=1e-15)


def test_class_list_is_read_by_the_training_pipeline(tmp_path):
    # The data pipeline's data.class_filter reader keeps the listed classes in file order.
    pipeline = pytest.importorskip("finegrain_tf.data.pipeline")
    ids = union_source_classes([SourceSelection(np.array([5, 2]), np.array([0.9, 0.8])), [7, 2]])
    path = write_class_list(str(tmp_path / "subset_a.txt"), ids)
    assert pipeline.read_class_filter(path, [f"c{i}" for i in range(10)]).tolist() == [5, 2, 7]
