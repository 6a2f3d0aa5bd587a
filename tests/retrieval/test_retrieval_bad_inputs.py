"""Bad input to the retrieval index, the Python API and the retrieval metrics: ValueErrors that name
the offending value (issue 11's battery)."""

import re

import numpy as np
import pytest

from finegrain_tf import metrics, retrieval

RNG = np.random.default_rng(0)
X = RNG.normal(size=(10, 8)).astype(np.float32)
IDS = [f"id{i}" for i in range(10)]
LABELS = np.arange(10) % 3


def _with(array, row, value):
    array = array.copy()
    array[row, 0] = value
    return array


def _exact():
    return retrieval.build_index(X, IDS, kind="exact")


INDEX_CASES = {
    "nan gallery": (lambda: retrieval.build_index(_with(X, 3, np.nan), IDS),
                    "gallery embeddings contain NaN or Inf in 1 row(s), first rows [3]"),
    "inf gallery": (lambda: retrieval.build_index(_with(X, 7, np.inf), IDS), "first rows [7]"),
    "1-D gallery": (lambda: retrieval.build_index(X[0], IDS[:1]), "must be a [N, D] matrix, got shape (8,)"),
    "empty gallery": (lambda: retrieval.build_index(np.zeros((0, 8)), []), "gallery embeddings is empty"),
    "string gallery": (lambda: retrieval.build_index(np.array([["a"]]), ["x"]), "must be numeric, got dtype <U1"),
    "ids length": (lambda: retrieval.build_index(X, IDS[:9]), "10 embeddings but 9 ids"),
    "duplicate ids": (lambda: retrieval.build_index(X, IDS[:9] + ["id2"]),
                      "ids must be unique, found 1 duplicate(s), e.g. ['id2']"),
    "empty id": (lambda: retrieval.build_index(X, IDS[:9] + [""]), "non-empty strings"),
    "single string ids": (lambda: retrieval.build_index(X[:1], "id0"), "got a single str 'id0'"),
    "unknown kind": (lambda: retrieval.build_index(X, IDS, kind="hnsw"), "kind must be one of"),
    "nlist > N": (lambda: retrieval.build_index(X, IDS, kind="ivf", nlist=20),
                  "nlist=20 is larger than the gallery (10 items)"),
    "nlist 0": (lambda: retrieval.build_index(X, IDS, kind="ivf", nlist=0), "nlist must be a positive int, got 0"),
    "nprobe > nlist": (lambda: retrieval.build_index(X, IDS, kind="ivf", nlist=4, nprobe=9),
                       "nprobe=9 is larger than nlist=4"),
    "nlist for exact": (lambda: retrieval.build_index(X, IDS, kind="exact", nlist=4), "apply to kind='ivf' only"),
    "k > N": (lambda: _exact().search(X[:2], 11), "k=11 is larger than the gallery (10 items)"),
    "k = 0": (lambda: _exact().search(X[:2], 0), "k must be a positive int, got 0"),
    "query dim": (lambda: _exact().search(X[:2, :5], 3), "queries have dimension 5, expected 8"),
    "nan query": (lambda: _exact().search(_with(X[:2], 1, np.nan), 3), "queries contain NaN or Inf"),
    "3-D query": (lambda: _exact().search(X[None], 3), "queries must be a [N, D] matrix"),
}

API_CASES = {
    "gallery labels length": (lambda: retrieval.Retriever(_exact(), labels=LABELS[:9]),
                              "9 gallery labels for a gallery of 10 items"),
    "evaluate without labels": (lambda: retrieval.Retriever(_exact()).evaluate(X[:2], [0, 1]),
                                "evaluate needs gallery labels"),
    "lookup rank 3": (lambda: retrieval.Retriever(_exact()).lookup(X[None], 2),
                      "queries must be embeddings [B, D] or images [B, H, W, C], got shape (1, 10, 8)"),
    "not an index": (lambda: retrieval.Retriever(X), "index must be a finegrain_tf.retrieval.SearchIndex"),
    "callback lengths": (lambda: retrieval.RetrievalEvaluation((np.zeros((4, 2, 2, 3)), [0, 1, 0])),
                         "validation data has 4 images but 3 labels"),
}

METRIC_CASES = {
    "labels length": (lambda: metrics.r_precision(X, LABELS[:9]), "10 embeddings but 9 labels"),
    "all singletons": (lambda: metrics.map_at_r(X, np.arange(10)),
                       "no query has another item of its class"),
    "one item": (lambda: metrics.r_precision(X[:1], [0]), "needs at least 2 items, got 1"),
    "nan embeddings": (lambda: metrics.map_at_r(_with(X, 0, np.nan), LABELS), "first rows [0]"),
    "distance": (lambda: metrics.r_precision(X, LABELS, distance="manhattan"), "distance must be one of"),
    "average": (lambda: metrics.map_at_r(X, LABELS, average="macro"), "average must be one of"),
    "cosine zero vector": (lambda: metrics.r_precision(np.zeros((3, 2)), [0, 0, 1], distance="cosine"),
                           "cosine distance is undefined for zero vectors (rows [0, 1, 2])"),
    "float labels": (lambda: metrics.r_precision(X, LABELS + 0.5), "labels must be integer class ids, got 0.5"),
    "k = 0": (lambda: metrics.precision_at_k(X, LABELS, ks=(0,)), "k must be a positive int, got 0"),
    "gallery dim": (lambda: metrics.recall_at_k(X, LABELS, X[:, :4], LABELS),
                    "gallery embeddings have dimension 4, expected 8"),
    "n_clusters": (lambda: metrics.cluster_scores(X, LABELS, n_clusters=11),
                   "n_clusters=11 is larger than the 10 embeddings"),
}


@pytest.mark.parametrize("case", sorted({**INDEX_CASES, **API_CASES, **METRIC_CASES}))
def test_bad_input_is_a_clear_value_error(case):
    call, message = {**INDEX_CASES, **API_CASES, **METRIC_CASES}[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
