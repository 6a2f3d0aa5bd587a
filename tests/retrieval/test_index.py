"""The exact and IVF indexes against a float64 brute-force loop, and through the TF1 session loader."""

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf import retrieval
from finegrain_tf.retrieval import build
from retrieval_reference import brute_force_knn, clustered


def _gallery(n=60, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), [f"item-{i}" for i in range(n)]


def test_exact_matches_brute_force_loop():
    x, ids = _gallery()
    queries = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    index = retrieval.build_index(x, ids, kind="exact")
    assert index.kind == "exact" and index.size == 60 and index.config["dim"] == 8
    scores, got_ids = index.search(queries, 7)
    want_d, want_pos = brute_force_knn(queries, x, 7)
    np.testing.assert_allclose(scores.numpy(), want_d, rtol=1e-5, atol=1e-5)
    assert got_ids.numpy().astype(str).tolist() == np.array(ids)[want_pos].tolist()
    _, pos = index.search_positions(queries, 7)
    np.testing.assert_array_equal(pos.numpy(), want_pos)


def test_exact_closed_form_and_ties_to_smaller_index():
    # 1-D gallery on a line; item 1 and 3 are duplicates at distance 1 from the query.
    x = np.array([[5.0], [1.0], [-3.0], [1.0], [0.5]], np.float32)
    index = retrieval.build_index(x, ["a", "b", "c", "d", "e"], kind="exact")
    scores, ids = index.search(np.array([[0.0]]), 4)
    np.testing.assert_allclose(scores.numpy(), [[0.25, 1.0, 1.0, 9.0]])
    assert ids.numpy().astype(str).tolist() == [["e", "b", "d", "c"]]


def test_ivf_with_every_list_probed_equals_exact():
    x, _ = clustered(400, 8, 6, 0.5, seed=2)
    ids = [f"g{i}" for i in range(400)]
    queries = clustered(9, 8, 6, 0.5, seed=3)[0]
    ivf = retrieval.build_index(x, ids, kind="ivf", nlist=10, nprobe=10)
    want_d, want_pos = brute_force_knn(queries, x, 6)
    scores, pos = ivf.search_positions(queries, 6)
    np.testing.assert_array_equal(pos.numpy(), want_pos)
    np.testing.assert_allclose(scores.numpy(), want_d, rtol=1e-5, atol=1e-4)
    exact_scores, exact_ids = retrieval.build_index(x, ids, kind="exact").search(queries, 6)
    assert ivf.search(queries, 6)[1].numpy().tolist() == exact_ids.numpy().tolist()


def _recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_ivf_recall_on_clustered_gallery_and_valid_ids():
    x, _ = clustered(2000, 16, 40, 0.35, seed=4)
    ids = [f"g{i}" for i in range(2000)]
    queries = clustered(30, 16, 40, 0.35, seed=5)[0]
    ivf = retrieval.build_index(x, ids, kind="ivf", nlist=32, seed=0)
    assert ivf.config["nlist"] == 32 and ivf.config["nprobe"] == 8
    _, truth = brute_force_knn(queries, x, 10)
    search = tf.function(lambda q, nprobe: ivf.search_positions(q, 10, nprobe))  # one trace for all nprobe
    recalls = {}
    for nprobe in (1, 2, 8, 32):
        scores, pos = search(tf.constant(queries), tf.constant(nprobe))
        recalls[nprobe] = _recall(pos.numpy(), truth)
        pos, scores = pos.numpy(), scores.numpy()
        assert np.all((pos >= 0) & (pos < 2000))
        assert all(len(set(row)) == 10 for row in pos)
        assert np.all(np.diff(scores, axis=1) >= 0)
        # every returned distance is that item's true distance to the query
        true_d = ((queries[:, None, :].astype(np.float64) - x[pos].astype(np.float64)) ** 2).sum(-1)
        np.testing.assert_allclose(scores, true_d, rtol=1e-4, atol=1e-4)
    print("IVF recall@10 by nprobe (nlist=32):", recalls)
    assert recalls[32] == 1.0
    assert recalls[8] >= 0.9  # default nprobe: 1/4 of the lists on 40 well-separated clusters
    assert recalls[1] < recalls[32]
    _, got_ids = ivf.search(queries, 10)
    assert set(got_ids.numpy().astype(str).ravel()) <= set(ids)


def test_ivf_pads_when_probed_lists_hold_fewer_than_k():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0], [10.0, 10.1]], np.float32)
    ivf = retrieval.IVFIndex(x, list("abcde"), centroids=np.array([[0, 0], [10, 10]], np.float32), nprobe=1)
    scores, ids = ivf.search(np.array([[0.0, 0.0]], np.float32), 4)
    assert ids.numpy().astype(str).tolist() == [["a", "b", "", ""]]
    np.testing.assert_allclose(scores.numpy()[0, :2], [0.0, 0.01], atol=1e-6)
    assert np.isinf(scores.numpy()[0, 2:]).all()
    assert ivf.search_positions(np.array([[0.0, 0.0]], np.float32), 4)[1].numpy().tolist() == [[0, 1, -1, -1]]
    _, ids = ivf.search(np.array([[0.0, 0.0]], np.float32), 4, nprobe=2)
    assert ids.numpy().astype(str).tolist() == [["a", "b", "c", "d"]]


@pytest.mark.parametrize("nprobe", [0, -1, 11, 2.5, True])
def test_ivf_nprobe_out_of_range_is_a_clear_error(nprobe):
    x, ids = _gallery(100)
    ivf = retrieval.build_index(x, ids, kind="ivf", nlist=10, nprobe=3)
    with pytest.raises(ValueError, match=r"nprobe must be an int in \[1, nlist=10\]"):
        ivf.search(x[:2], 3, nprobe=nprobe)


def test_auto_kind_switches_at_the_size_threshold(monkeypatch):
    x, ids = _gallery(200)
    assert retrieval.build_index(x, ids).kind == "exact"
    monkeypatch.setattr(build, "AUTO_EXACT_MAX_SIZE", 199)
    index = retrieval.build_index(x, ids)
    assert index.kind == "ivf" and index.config["nlist"] == 25  # min(2 sqrt(200), 200 / 8)


def test_ivf_build_is_deterministic_given_the_seed():
    x, ids = _gallery(300)
    a = retrieval.build_index(x, ids, kind="ivf", nlist=8, seed=3)
    b = retrieval.build_index(x, ids, kind="ivf", nlist=8, seed=3)
    np.testing.assert_array_equal(a.centroids.numpy(), b.centroids.numpy())
    np.testing.assert_array_equal(a.positions.numpy(), b.positions.numpy())


# ------------------------------------------------------------------------------------------------
# SavedModel round trip through the TF1 session loader (TF Serving's path)


def _run_session_loader(path, queries, nprobe):
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["lookup"]
        return sess.run({k: v.name for k, v in sig.outputs.items()},
                        {sig.inputs["queries"].name: queries, sig.inputs["nprobe"].name: nprobe})


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_saved_model_through_session_loader_equals_python(tmp_path, kind):
    x, ids = clustered(500, 8, 5, 0.5, seed=6)[0], [f"id/{i}" for i in range(500)]
    queries = clustered(4, 8, 5, 0.5, seed=7)[0]
    index = retrieval.build_index(x, ids, kind=kind, **({"nlist": 12, "nprobe": 2} if kind == "ivf" else {}))
    retrieval.save_index(index, str(tmp_path / "m"), k=5)
    del index
    index = retrieval.build_index(x, ids, kind=kind, **({"nlist": 12, "nprobe": 2} if kind == "ivf" else {}))
    for nprobe in (1, 3):
        served = _run_session_loader(str(tmp_path / "m"), queries, nprobe)
        scores, got = index.search(queries, 5, nprobe if kind == "ivf" else None)
        np.testing.assert_allclose(served["distances"], scores.numpy(), rtol=1e-6, atol=1e-6)
        assert served["ids"].tolist() == got.numpy().tolist()


def test_served_nprobe_out_of_range_fails_in_the_graph(tmp_path):
    x, ids = _gallery(100)
    retrieval.save_index(retrieval.build_index(x, ids, kind="ivf", nlist=10), str(tmp_path / "m"), k=3)
    for bad in (0, 11):
        with pytest.raises(tf.errors.InvalidArgumentError, match="nprobe must be"):
            _run_session_loader(str(tmp_path / "m"), x[:2], bad)
