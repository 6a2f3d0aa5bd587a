"""Embedding evaluation: anchor soft-vote accuracy (seed 000 eq 2.3), recall@k, and triplet accuracy on
human-rated triplets (Q, A, B) (seed 004 §5.3: the fraction of triplets whose model distances agree
with the raters' choice of the image closer to Q). numpy, chunked matrix products."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def soft_vote_scores(embeddings, anchors, gamma: float = 5.0) -> np.ndarray:
    """p_i of eq 2.3 for every embedding: [n, N] (log-space evaluation, finite for any gamma)."""
    x = np.asarray(embeddings, np.float64)
    u = np.asarray(anchors, np.float64)
    if u.ndim != 3 or u.shape[-1] != x.shape[-1]:
        raise ValueError(f"anchors must be [N, K, D] with D={x.shape[-1]}, got {u.shape}")
    n_cls, k, dim = u.shape
    s = -gamma * _sq_dists(x, u.reshape(n_cls * k, dim)).reshape(len(x), n_cls, k)
    m = s.max(axis=2, keepdims=True)
    cls = (m[..., 0] + np.log(np.exp(s - m).sum(axis=2)))
    cls -= cls.max(axis=1, keepdims=True)
    p = np.exp(cls)
    return p / p.sum(axis=1, keepdims=True)


def soft_vote_accuracy(embeddings, labels, anchors, gamma: float = 5.0) -> float:
    """Top-1 accuracy of argmax_i p_i (eq 2.3)."""
    labels = np.asarray(labels).reshape(-1)
    return float(np.mean(soft_vote_scores(embeddings, anchors, gamma).argmax(1) == labels))


def recall_at_k(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None,
                ks: Sequence[int] = (1, 2, 4, 8), chunk: int = 1024) -> dict:
    """Recall@k: fraction of queries with a same-class item among their k nearest gallery items.

    Without a gallery, leave-one-out retrieval inside the query set (the query itself is excluded).
    Returns {k: recall}.
    """
    q = np.asarray(query_embeddings, np.float32)
    ql = np.asarray(query_labels).reshape(-1)
    same_set = gallery_embeddings is None
    g = q if same_set else np.asarray(gallery_embeddings, np.float32)
    gl = ql if same_set else np.asarray(gallery_labels).reshape(-1)
    ks = sorted(int(k) for k in ks)
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    kmax = min(ks[-1], len(g) - (1 if same_set else 0))
    hits = {k: 0 for k in ks}
    for start in range(0, len(q), chunk):
        d = _sq_dists(q[start:start + chunk], g)
        if same_set:
            rows = np.arange(len(d))
            d[rows, start + rows] = np.inf
        nearest = np.argsort(d, axis=1, kind="stable")[:, :kmax]
        match = gl[nearest] == ql[start:start + chunk, None]
        first = np.where(match.any(1), match.argmax(1), np.iinfo(np.int64).max)
        for k in ks:
            hits[k] += int(np.sum(first < k))
    return {k: hits[k] / len(q) for k in ks}


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
