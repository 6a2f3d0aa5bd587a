"""Class-balanced P x K batches for in-batch mining, and Siamese pair sampling (seed 004 §4.2.1, §5.1.1)."""

from __future__ import annotations

from typing import Iterator

import numpy as np


class PKBatchSampler:
    """Batches of P classes x K images each (indices into the dataset), for `TripletLoss` mining.

    Classes with fewer than K images are sampled with replacement; only classes with at least
    `min_per_class` images are drawn (2 by default, so every anchor has a positive).
    """

    def __init__(self, labels, P: int, K: int, seed: int = 0, min_per_class: int = 2):
        self.labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be >= 1, got P={P!r}, K={K!r}")
        classes, counts = np.unique(self.labels, return_counts=True)
        self.classes = classes[counts >= min_per_class]
        if len(self.classes) < P:
            raise ValueError(f"P={P} classes per batch but only {len(self.classes)} classes have "
                             f">= {min_per_class} images")
        self.P, self.K = int(P), int(K)
        order = np.argsort(self.labels, kind="stable")
        starts = np.searchsorted(self.labels[order], self.classes, side="left")
        ends = np.searchsorted(self.labels[order], self.classes, side="right")
        self._members = {int(c): order[s:e] for c, s, e in zip(self.classes, starts, ends)}
        self._rng = np.random.default_rng(seed)

    @property
    def batch_size(self) -> int:
        return self.P * self.K

    def sample(self) -> np.ndarray:
        """One batch [P * K] of indices, grouped by class."""
        chosen = self._rng.choice(self.classes, size=self.P, replace=False)
        parts = []
        for c in chosen:
            members = self._members[int(c)]
            parts.append(self._rng.choice(members, size=self.K, replace=len(members) < self.K))
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.sample()


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
