"""Embedding evaluation: retrieval metrics, clustering quality, anchor soft voting, human-rated triplets.

Retrieval metrics (the ones metric-learning papers report; definitions of Musgrave et al., "A Metric
Learning Reality Check", 2020), leave-one-out over one set unless a gallery is given: every query ranks
all other items by Euclidean distance on the vectors as given (`distance="cosine"` ranks unit vectors),
ties broken by the smaller index, in float64.

  recall_at_k      fraction of queries with a same-class item among their k nearest ("Recall@k" of
                   the image-retrieval literature, i.e. hit rate)
  precision_at_k   mean fraction of same-class items among the k nearest
  r_precision      R = number of other items of the query's class; fraction of the R nearest that match
  map_at_r         mean average precision over the R nearest: (1/R) sum_{i<=R} P(i) * rel(i)
  cluster_scores   NMI / AMI between k-means clusters (sklearn, k = number of classes) and the labels
  retrieval_report all of the above in one dict

Queries with no other item of their class are left out (they cannot be answered). `average="class"`
averages per class first, then over classes (long-tailed data, where head classes would dominate).

Also: anchor soft-vote accuracy (seed 000 eq 2.3) and triplet accuracy on human-rated triplets (Q, A, B)
(seed 004 §5.3: the fraction of triplets whose model distances agree with the raters' choice).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from finegrain_tf.utils import checks
from finegrain_tf.utils.labels import to_int_labels

DISTANCES = ("euclidean", "cosine")
AVERAGES = ("query", "class")

# ------------------------------------------------------------------------------------------------
# Distances and input checks (shared with finegrain_tf.retrieval)


def check_embeddings(values, name: str = "embeddings", dim: int | None = None, dtype=np.float64) -> np.ndarray:
    """`values` as a finite [N, D] array with N >= 1; ValueError naming what is wrong."""
    arr = np.asarray(values.numpy() if hasattr(values, "numpy") else values)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0 (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, expected {dim}")
    arr = arr.astype(dtype, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name} contain NaN or Inf in {bad.size} row(s), first rows {bad[:5].tolist()}")
    return arr


def for_distance(embeddings: np.ndarray, distance: str = "euclidean") -> np.ndarray:
    """Vectors whose Euclidean ranking is the `distance` ranking ("cosine": unit rows)."""
    checks.one_of(distance, "distance", DISTANCES)
    if distance == "cosine":
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError(f"cosine distance is undefined for zero vectors (rows "
                             f"{np.flatnonzero(norms[:, 0] == 0)[:5].tolist()})")
        return embeddings / norms
    return embeddings


def squared_distances(a, b) -> np.ndarray:
    """||a_i - b_j||^2 for all pairs, [len(a), len(b)] float64 (clipped at 0 against rounding)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def _chunk_rows(n_gallery: int, chunk: int | None) -> int:
    """Query rows per distance block: at most ~256 MB of float64 distances."""
    return chunk or int(max(1, min(1024, 2**25 // max(n_gallery, 1))))


def _k_smallest(d: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k smallest entries of each row, ordered by (value, position)."""
    if k >= d.shape[1]:
        return np.argsort(d, axis=1, kind="stable")[:, :k]
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(d, part, 1)
    out = np.take_along_axis(part, np.lexsort((part, values), axis=-1), 1)
    # an item tied with the k-th value but left outside the partition may have a smaller position
    kth = values.max(axis=1, keepdims=True)
    ambiguous = (d == kth).sum(axis=1) > (values == kth).sum(axis=1)
    if ambiguous.any():
        out[ambiguous] = np.argsort(d[ambiguous], axis=1, kind="stable")[:, :k]
    return out


def nearest_neighbours(queries, gallery=None, k: int = 1, chunk: int | None = None,
                       query_offset: int | None = None) -> np.ndarray:
    """Positions [Q, k] of each query's k nearest gallery items (float64, ties -> smaller position).

    Without a gallery: leave-one-out inside `queries` (an item is never its own neighbour, k <= N - 1).
    `query_offset`: query i is gallery item query_offset + i and is left out (leave-one-out in blocks).
    """
    q = np.asarray(queries, np.float64)
    if gallery is None:
        gallery, query_offset = q, 0
    g = np.asarray(gallery, np.float64)
    chunk = _chunk_rows(len(g), chunk)
    out = np.empty((len(q), k), np.int64)
    for start in range(0, len(q), chunk):
        d = squared_distances(q[start:start + chunk], g)
        if query_offset is not None:
            rows = np.arange(len(d))
            d[rows, query_offset + start + rows] = np.inf
        out[start:start + chunk] = _k_smallest(d, k)
    return out


# ------------------------------------------------------------------------------------------------
# Scores from ranked neighbour labels (shared by the plain functions and finegrain_tf.retrieval)


def _per_query(rel: np.ndarray, num_relevant: np.ndarray, ks: Sequence[int]) -> dict:
    """Per-query recall@k, precision@k and (when the ranking covers R) R-precision and AP@R."""
    width = rel.shape[1]
    out = {}
    for k in ks:
        if k > width:
            raise ValueError(f"k={k} is larger than the {width} ranked neighbours")
        out[f"recall@{k}"] = rel[:, :k].any(axis=1).astype(np.float64)
        out[f"precision@{k}"] = rel[:, :k].mean(axis=1)
    if num_relevant.max(initial=0) <= width:
        r = np.maximum(num_relevant, 1)
        hits = rel & (np.arange(width)[None, :] < num_relevant[:, None])
        out["r_precision"] = hits.sum(axis=1) / r
        precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, width + 1)[None, :]
        out["map_at_r"] = (precision_at_i * hits).sum(axis=1) / r
    return out


def _average(per_query: dict, labels: np.ndarray, num_relevant: np.ndarray, average: str) -> dict:
    checks.one_of(average, "average", AVERAGES)
    keep = num_relevant > 0
    if not keep.any():
        raise ValueError("no query has another item of its class: retrieval metrics are undefined")
    labels = labels[keep]
    out = {}
    for name, values in per_query.items():
        values = values[keep]
        if average == "class":
            out[name] = float(np.mean([values[labels == c].mean() for c in np.unique(labels)]))
        else:
            out[name] = float(values.mean())
    return out


def ranking_scores(neighbour_labels, query_labels, num_relevant, ks: Sequence[int] = (),
                   average: str = "query") -> dict:
    """Retrieval scores from ranked neighbours.

    Args:
      neighbour_labels: [Q, K] labels of each query's neighbours, nearest first (K >= max(ks); for
        "r_precision" / "map_at_r", K >= max(num_relevant)).
      query_labels: [Q] labels.
      num_relevant: [Q] number of gallery items of each query's class (R); queries with R = 0 are left out.
      ks: the k of recall@k and precision@k.
      average: "query" (mean over queries) or "class" (mean over classes of the per-class means).

    Returns:
      {"recall@k": ..., "precision@k": ..., "r_precision": ..., "map_at_r": ...}; the last two only when
      the ranking covers every query's R.
    """
    query_labels = np.asarray(query_labels).reshape(-1)
    num_relevant = np.asarray(num_relevant).reshape(-1)
    rel = np.asarray(neighbour_labels) == query_labels[:, None]
    return _average(_per_query(rel, num_relevant, ks), query_labels, num_relevant, average)


def _leave_one_out(embeddings, labels, distance: str, ks: Sequence[int], with_r: bool, average: str,
                   chunk: int | None = None) -> dict:
    """Leave-one-out scores over one set, ranked in blocks of queries (memory ~ block x N)."""
    checks.one_of(average, "average", AVERAGES)
    x = for_distance(check_embeddings(embeddings), distance)
    y = to_int_labels(labels, name="labels")
    if len(y) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
    if len(x) < 2:
        raise ValueError(f"leave-one-out retrieval needs at least 2 items, got {len(x)}")
    num_relevant = np.bincount(y)[y] - 1
    width = min(max(max(ks, default=1), int(num_relevant.max()) if with_r else 1), len(x) - 1)
    ks = [min(k, width) for k in ks]
    chunk = _chunk_rows(len(x), chunk)
    parts = []
    for start in range(0, len(x), chunk):
        block = slice(start, start + chunk)
        ranked = y[nearest_neighbours(x[block], x, width, chunk, query_offset=start)]
        parts.append(_per_query(ranked == y[block, None], num_relevant[block], ks))
    per_query = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return _average(per_query, y, num_relevant, average)


# ------------------------------------------------------------------------------------------------
# Plain functions


def r_precision(embeddings, labels, distance: str = "euclidean", average: str = "query") -> float:
    """R-precision, leave-one-out over one set (see the module doc)."""
    return _leave_one_out(embeddings, labels, distance, (), True, average)["r_precision"]


def map_at_r(embeddings, labels, distance: str = "euclidean", average: str = "query") -> float:
    """MAP@R (Musgrave et al. 2020), leave-one-out over one set (see the module doc)."""
    return _leave_one_out(embeddings, labels, distance, (), True, average)["map_at_r"]


def _ks(ks) -> list[int]:
    ks = sorted({checks.positive_int(k, "k") for k in ks})
    if not ks:
        raise ValueError("ks must hold at least one positive int, got none")
    return ks


def precision_at_k(embeddings, labels, ks: Sequence[int] = (1, 5, 10), distance: str = "euclidean",
                   average: str = "query") -> dict:
    """{k: mean fraction of same-class items among the k nearest}, leave-one-out over one set.

    k larger than N - 1 is clipped to N - 1."""
    ks = _ks(ks)
    scores = _leave_one_out(embeddings, labels, distance, ks, False, average)
    width = len(np.asarray(labels).reshape(-1)) - 1
    return {k: scores[f"precision@{min(k, width)}"] for k in ks}


def recall_at_k(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None,
                ks: Sequence[int] = (1, 2, 4, 8), distance: str = "euclidean", average: str = "query") -> dict:
    """Recall@k: fraction of queries with a same-class item among their k nearest gallery items.

    Without a gallery, leave-one-out retrieval inside the query set (the query itself is excluded).
    Queries without any item of their class in the gallery are left out; k larger than the gallery is
    clipped to it. Returns {k: recall}.
    """
    ks = _ks(ks)
    if gallery_embeddings is None:
        scores = _leave_one_out(query_embeddings, query_labels, distance, ks, False, average)
        width = len(np.asarray(query_labels).reshape(-1)) - 1
        return {k: scores[f"recall@{min(k, width)}"] for k in ks}
    q = for_distance(check_embeddings(query_embeddings, "query embeddings"), distance)
    g = for_distance(check_embeddings(gallery_embeddings, "gallery embeddings", q.shape[1]), distance)
    y = to_int_labels(query_labels, name="query labels")
    gl = to_int_labels(gallery_labels, name="gallery labels")
    if len(y) != len(q) or len(gl) != len(g):
        raise ValueError(f"{len(q)} query embeddings with {len(y)} labels, {len(g)} gallery embeddings with "
                         f"{len(gl)} labels")
    width = min(ks[-1], len(g))
    num_relevant = np.bincount(gl, minlength=int(y.max()) + 1)[y]
    scores = ranking_scores(gl[nearest_neighbours(q, g, width)], y, num_relevant,
                            sorted({min(k, width) for k in ks}), average)
    return {k: scores[f"recall@{min(k, width)}"] for k in ks}


def cluster_scores(embeddings, labels, n_clusters: int | None = None, seed: int = 0,
                   distance: str = "euclidean") -> dict:
    """{"nmi", "ami"} between k-means clusters of the embeddings (k = number of classes) and the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    x = for_distance(check_embeddings(embeddings), distance)
    y = to_int_labels(labels, name="labels")
    if len(y) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
    n_clusters = checks.positive_int(n_clusters, "n_clusters") if n_clusters is not None else len(np.unique(y))
    if n_clusters > len(x):
        raise ValueError(f"n_clusters={n_clusters} is larger than the {len(x)} embeddings")
    clusters = KMeans(n_clusters, n_init=1, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(y, clusters)),
            "ami": float(adjusted_mutual_info_score(y, clusters))}


def retrieval_report(embeddings, labels, ks: Sequence[int] = (1, 2, 4, 8), distance: str = "euclidean",
                     average: str = "query", clustering: bool = True, seed: int = 0) -> dict:
    """Leave-one-out recall@k, precision@k, R-precision, MAP@R and, with `clustering`, NMI / AMI."""
    ks = _ks(ks)
    report = _leave_one_out(embeddings, labels, distance, ks, True, average)
    if clustering:
        report.update(cluster_scores(embeddings, labels, seed=seed, distance=distance))
    return report


# ------------------------------------------------------------------------------------------------
# Anchor soft voting and human-rated triplets


def soft_vote_scores(embeddings, anchors, gamma: float = 5.0) -> np.ndarray:
    """p_i of eq 2.3 for every embedding: [n, N] (log-space evaluation, finite for any gamma)."""
    x = np.asarray(embeddings, np.float64)
    u = np.asarray(anchors, np.float64)
    if u.ndim != 3 or u.shape[-1] != x.shape[-1]:
        raise ValueError(f"anchors must be [N, K, D] with D={x.shape[-1]}, got {u.shape}")
    n_cls, k, dim = u.shape
    s = -gamma * squared_distances(x, u.reshape(n_cls * k, dim)).reshape(len(x), n_cls, k)
    m = s.max(axis=2, keepdims=True)
    cls = (m[..., 0] + np.log(np.exp(s - m).sum(axis=2)))
    cls -= cls.max(axis=1, keepdims=True)
    p = np.exp(cls)
    return p / p.sum(axis=1, keepdims=True)


def soft_vote_accuracy(embeddings, labels, anchors, gamma: float = 5.0) -> float:
    """Top-1 accuracy of argmax_i p_i (eq 2.3)."""
    labels = np.asarray(labels).reshape(-1)
    return float(np.mean(soft_vote_scores(embeddings, anchors, gamma).argmax(1) == labels))


def triplet_accuracy(q, a, b, closer) -> float:
    """Agreement with human-rated triplets (seed 004 §5.3).

    Args:
      q, a, b: embeddings [T, D] of the query and the two candidates.
      closer: [T] the raters' answer, 0 if A is more similar to Q, 1 if B is.
    Ties (equal distances) count as half right.
    """
    q, a, b = (np.asarray(v, np.float64) for v in (q, a, b))
    closer = np.asarray(closer).reshape(-1)
    if not np.all(np.isin(closer, (0, 1))):
        raise ValueError(f"closer must be 0 (A) or 1 (B), got values {np.unique(closer)!r}")
    d_a = ((q - a) ** 2).sum(1)
    d_b = ((q - b) ** 2).sum(1)
    model = np.where(d_a < d_b, 0, 1)
    right = np.where(d_a == d_b, 0.5, (model == closer).astype(np.float64))
    return float(right.mean())
