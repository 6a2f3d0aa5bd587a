"""Siamese pair sampling (seed 004 §4.2.1, §5.1.1): same-class / different-class index pairs."""

from __future__ import annotations

import numpy as np


def sample_pairs(labels, num_pairs: int, positive_ratio: float = 0.5, seed: int = 0):
    """Siamese pairs (i, j, y) with y = 1 for same-class pairs, `positive_ratio` of them positive.

    Vectorised: a positive partner is another member of the anchor's class, a negative partner is
    re-drawn until its class differs. Returns int64 arrays i, j and int64 y of length `num_pairs`.
    """
    if not 0.0 <= positive_ratio <= 1.0:
        raise ValueError(f"positive_ratio must be in [0, 1], got {positive_ratio!r}")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    rng = np.random.default_rng(seed)
    n_pos = int(round(num_pairs * positive_ratio))
    n_neg = num_pairs - n_pos
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    start = np.searchsorted(sorted_labels, labels, side="left")
    count = np.searchsorted(sorted_labels, labels, side="right") - start
    rank = np.empty_like(order)
    rank[order] = np.arange(len(labels))  # position of item in the sorted order
    eligible = np.flatnonzero(count >= 2)
    if n_pos and not len(eligible):
        raise ValueError("no class has two images: cannot form positive pairs")
    if n_neg and len(np.unique(labels)) < 2:
        raise ValueError("only one class: cannot form negative pairs")
    i_pos = rng.choice(eligible, size=n_pos) if n_pos else np.zeros(0, np.int64)
    offs = rank[i_pos] - start[i_pos]
    step = 1 + (rng.random(n_pos) * (count[i_pos] - 1)).astype(np.int64)
    j_pos = order[start[i_pos] + (offs + step) % count[i_pos]]
    i_neg = rng.integers(0, len(labels), size=n_neg)
    j_neg = rng.integers(0, len(labels), size=n_neg)
    bad = labels[i_neg] == labels[j_neg]
    while bad.any():
        j_neg[bad] = rng.integers(0, len(labels), size=int(bad.sum()))
        bad = labels[i_neg] == labels[j_neg]
    i = np.concatenate([i_pos, i_neg]).astype(np.int64)
    j = np.concatenate([j_pos, j_neg]).astype(np.int64)
    y = np.concatenate([np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    perm = rng.permutation(num_pairs)
    return i[perm], j[perm], y[perm]
