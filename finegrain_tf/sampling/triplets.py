"""Quasi-online triplet sampling with local positives and human hard negatives (seed 000 §2.3.2–2.3.3,
§2.4.1, §2.4.3, Fig 2.6).

Every `refresh_every` steps the embeddings of the whole training set are extracted, then for each
reference image x of class c:

1. Local positives (§2.3.3): the positive is drawn from the nearest `positive_fraction` (seed: 60%) of
   the other images of class c in feature space, so a class may spread along a manifold instead of
   being pulled into a sphere (eq 2.2). `positive_fraction=1` samples from the whole class.
2. Class negatives (§2.3.2), from other classes, by `negatives`:
   - "violating": uniform among those violating the margin against the chosen positive,
     ||f(x) - f(x_n)||^2 < ||f(x) - f(x_p)||^2 + m (the seed's choice: the hardest ones are often
     label noise);
   - "hardest": the violator with the largest ||f(x)-f(x_p)||^2 - ||f(x)-f(x_n)||^2;
   - "random": any image of another class (Triplet-Naive).
   Anchors with no violating negative give no triplet this round.
3. Human hard negatives (§2.4.3): images wrongly proposed for class c (false positives marked by
   labellers) form extra triplets with the same anchor and positive, as many as the class negatives,
   and every batch holds the two kinds 1:1.

Triplets are indices into a pool: training items 0..n-1, then human hard negatives n..n+H-1.
The local-positive search uses scikit-learn's exact nearest neighbours per class; the negative search
scans blocks of the pool with matrix products (no Python loop over pairs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Optional

import numpy as np
from absl import logging
from sklearn.neighbors import NearestNeighbors

NEGATIVE_MODES = ("violating", "hardest", "random")


@dataclasses.dataclass
class TripletSet:
    """Sampled triplets as pool indices (train items first, then human hard negatives)."""
    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    human: np.ndarray  # bool: the negative is a human-labelled hard negative

    def __len__(self) -> int:
        return len(self.anchors)

    def as_array(self) -> np.ndarray:
        """[T, 3] int64 (anchor, positive, negative)."""
        return np.stack([self.anchors, self.positives, self.negatives], axis=1).astype(np.int64)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _check_fraction(positive_fraction: float) -> None:
    if not 0.0 < positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction!r}")


def local_positive_neighbours(embeddings: np.ndarray, labels: np.ndarray,
                              positive_fraction: float = 0.6) -> list:
    """Per item, the indices of its nearest ceil(fraction * (n_c - 1)) same-class neighbours (itself
    excluded), nearest first. Items alone in their class get an empty array."""
    _check_fraction(positive_fraction)
    x = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1)
    out = [np.zeros((0,), np.int64)] * len(labels)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_c = len(idx)
        if n_c < 2:
            continue
        k = max(1, int(math.ceil(positive_fraction * (n_c - 1))))
        # k + 1 neighbours include the item itself, except when exact duplicates tie with it.
        found = NearestNeighbors(n_neighbors=k + 1).fit(x[idx]).kneighbors(x[idx], return_distance=False)
        not_self = found != np.arange(n_c)[:, None]
        first_k = np.argsort(~not_self, axis=1, kind="stable")[:, :k]  # first k non-self entries
        nearest = np.take_along_axis(found, first_k, axis=1)
        for r, row in enumerate(idx):
            out[row] = idx[nearest[r]]
    return out


def _class_negatives(x, labels, anchors, positives, margin, negatives, rng, block_size):
    """One negative per (anchor, positive) or none: returns (kept mask, negative index)."""
    n = len(labels)
    d_ap = ((x[anchors] - x[positives]) ** 2).sum(1)
    chosen = np.full(len(anchors), -1, np.int64)
    if negatives == "hardest":
        best = np.full(len(anchors), np.inf)
        for b0 in range(0, n, block_size):
            cols = np.arange(b0, min(n, b0 + block_size))
            d = _sq_dists(x[anchors], x[cols])
            d[labels[cols][None, :] == labels[anchors][:, None]] = np.inf
            j = d.argmin(axis=1)
            closer = d[np.arange(len(anchors)), j] < best
            best[closer] = d[np.arange(len(anchors)), j][closer]
            chosen[closer] = cols[j[closer]]
        keep = best < d_ap + margin
        return keep, chosen
    # Every (anchor, acceptable negative) pair gets an independent uniform key and each anchor keeps
    # its largest key over all blocks: a uniform draw among that anchor's acceptable negatives,
    # independent across anchors. (Taking the first acceptable column of one shared random order is
    # uniform per anchor but gives most anchors of a round the same one or two negatives.)
    best = np.full(len(anchors), -1.0)
    for b0 in range(0, n, block_size):
        cols = np.arange(b0, min(n, b0 + block_size))
        ok = labels[cols][None, :] != labels[anchors][:, None]
        if negatives == "violating":
            ok &= _sq_dists(x[anchors], x[cols]) < (d_ap + margin)[:, None]
        keys = np.where(ok, rng.random(ok.shape), -1.0)
        j = keys.argmax(axis=1)
        key = keys[np.arange(len(anchors)), j]
        better = key > best
        best[better] = key[better]
        chosen[better] = cols[j[better]]
    return chosen >= 0, chosen


def sample_triplets(embeddings, labels, positive_fraction: float = 0.6, margin: float = 0.2,
                    negatives: str = "violating", triplets_per_anchor: int = 1,
                    hard_negative_embeddings=None, hard_negative_classes=None,
                    filter_human_negatives: bool = False, seed: int = 0,
                    chunk_size: int = 1024, block_size: int = 4096) -> TripletSet:
    """One round of the quasi-online sampling of Fig 2.6 (see the module docstring).

    Args:
      embeddings, labels: the training set in feature space, [n, D] and [n].
      positive_fraction: size of the local positive region (fraction of same-class neighbours).
      margin: m of eq 2.1 for the violation test (squared L2 distances, as in eq 2.1).
      negatives: one of `NEGATIVE_MODES`.
      triplets_per_anchor: positives (each with one class negative) drawn per reference image.
      hard_negative_embeddings, hard_negative_classes: human hard negatives [H, D] and the class each
        was wrongly proposed for [H]; for every kept class negative of an anchor of class c one human
        negative of c (uniformly drawn) is added with the same anchor and positive, when c has any.
      filter_human_negatives: also require human negatives to violate the margin.
      chunk_size, block_size: anchors and pool columns per matrix product (memory bound).
    """
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"negatives={negatives!r} is not one of {list(NEGATIVE_MODES)}")
    if triplets_per_anchor < 1:
        raise ValueError(f"triplets_per_anchor must be >= 1, got {triplets_per_anchor!r}")
    _check_fraction(positive_fraction)
    rng = np.random.default_rng(seed)
    x = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    n = len(labels)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"embeddings {x.shape} and labels {labels.shape} disagree")
    neighbours = local_positive_neighbours(x, labels, positive_fraction)
    counts = np.array([len(nb) for nb in neighbours], np.int64)
    anchors = np.repeat(np.flatnonzero(counts > 0), triplets_per_anchor)
    pick = (rng.random(len(anchors)) * counts[anchors]).astype(np.int64)
    positives = np.array([neighbours[a][j] for a, j in zip(anchors, pick)], np.int64)

    kept_a, kept_p, kept_n = [], [], []
    for start in range(0, len(anchors), chunk_size):
        a, p = anchors[start:start + chunk_size], positives[start:start + chunk_size]
        keep, neg = _class_negatives(x, labels, a, p, margin, negatives, rng, block_size)
        kept_a.append(a[keep])
        kept_p.append(p[keep])
        kept_n.append(neg[keep])
    empty = np.zeros(0, np.int64)
    a = np.concatenate(kept_a) if kept_a else empty
    p = np.concatenate(kept_p) if kept_p else empty
    neg = np.concatenate(kept_n) if kept_n else empty
    human = np.zeros(len(a), bool)

    if hard_negative_classes is not None and len(hard_negative_classes) and len(a):
        hn_cls = np.asarray(hard_negative_classes).reshape(-1).astype(np.int64)
        hn_x = np.asarray(hard_negative_embeddings, np.float32)
        if hn_x.shape[0] != len(hn_cls):
            raise ValueError(f"hard_negative_embeddings {hn_x.shape} and classes {hn_cls.shape} disagree")
        order = np.argsort(hn_cls, kind="stable")
        sorted_cls = hn_cls[order]
        lo = np.searchsorted(sorted_cls, labels[a], side="left")
        hi = np.searchsorted(sorted_cls, labels[a], side="right")
        has = hi > lo
        j = lo + (rng.random(len(a)) * (hi - lo)).astype(np.int64)
        hn_local = order[np.minimum(j, len(order) - 1)]
        if filter_human_negatives:
            d_ap = ((x[a] - x[p]) ** 2).sum(1)
            d_an = ((x[a] - hn_x[hn_local]) ** 2).sum(1)
            has &= d_an < d_ap + margin
        a = np.concatenate([a, a[has]])
        p = np.concatenate([p, p[has]])
        neg = np.concatenate([neg, n + hn_local[has]])
        human = np.concatenate([human, np.ones(int(has.sum()), bool)])
    return TripletSet(anchors=a, positives=p, negatives=neg, human=human)


class QuasiOnlineTripletSampler:
    """Quasi-online sampler (§2.4.1): re-sample triplets from fresh embeddings every N steps.

    Usage (the metric task calls `refresh` from its per-step hook and feeds `next_batch` to tf.data):
        sampler = QuasiOnlineTripletSampler(train_labels, batch_size=50, refresh_every=1000,
                                            hard_negative_classes=hn.classes)
        for step, batch in enumerate(sampler.run(embed_fn, total_steps)):
            ...  # batch: [batch_size, 3] pool indices (anchor, positive, negative)

    `embed_fn()` returns the embeddings of the training set [n, D], or a pair (train [n, D],
    human hard negatives [H, D]). When a round keeps no triplet (nothing violates the margin), that
    round falls back to random negatives so training can go on (logged).
    """

    def __init__(self, labels, positive_fraction: float = 0.6, margin: float = 0.2,
                 negatives: str = "violating", triplets_per_anchor: int = 1, batch_size: int = 50,
                 refresh_every: int = 1000, hard_negative_classes=None,
                 filter_human_negatives: bool = False, seed: int = 0):
        if batch_size < 1 or refresh_every < 1:
            raise ValueError(f"batch_size and refresh_every must be >= 1, got {batch_size!r}, "
                             f"{refresh_every!r}")
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives={negatives!r} is not one of {list(NEGATIVE_MODES)}")
        _check_fraction(positive_fraction)
        self.labels = np.asarray(labels).reshape(-1).astype(np.int64)
        self.positive_fraction = positive_fraction
        self.margin = margin
        self.negatives = negatives
        self.triplets_per_anchor = triplets_per_anchor
        self.batch_size = batch_size
        self.refresh_every = refresh_every
        self.hard_negative_classes = (None if hard_negative_classes is None
                                      else np.asarray(hard_negative_classes).reshape(-1))
        self.filter_human_negatives = filter_human_negatives
        self._rng = np.random.default_rng(seed)
        self.triplets: Optional[TripletSet] = None
        self.rounds = 0
        self.fallback_rounds = 0
        self._queues = []

    def refresh(self, embeddings, hard_negative_embeddings=None) -> TripletSet:
        """Samples a new list of triplets from the current embeddings."""
        use_hn = self.hard_negative_classes is not None and hard_negative_embeddings is not None
        args = dict(hard_negative_embeddings=hard_negative_embeddings if use_hn else None,
                    hard_negative_classes=self.hard_negative_classes if use_hn else None,
                    filter_human_negatives=self.filter_human_negatives)
        triplets = sample_triplets(embeddings, self.labels, self.positive_fraction, self.margin,
                                   self.negatives, self.triplets_per_anchor,
                                   seed=int(self._rng.integers(2 ** 31)), **args)
        if not (~triplets.human).any():
            logging.warning("no triplet violates the margin; random negatives this round")
            self.fallback_rounds += 1
            triplets = sample_triplets(embeddings, self.labels, self.positive_fraction, self.margin,
                                       "random", self.triplets_per_anchor,
                                       seed=int(self._rng.integers(2 ** 31)), **args)
        if not len(triplets):
            raise ValueError("no triplet can be formed: every class needs >= 2 training images and "
                             "there must be >= 2 classes")
        self.triplets = triplets
        self.rounds += 1
        # Class-negative and human-negative triplets are cycled separately so every batch mixes them 1:1.
        table = triplets.as_array()
        self._queues = [_Cycle(table[~triplets.human], self._rng)]
        if triplets.human.any():
            self._queues.append(_Cycle(table[triplets.human], self._rng))
        logging.info("triplet refresh %d: %d triplets (%d with human negatives)", self.rounds,
                     len(triplets), int(triplets.human.sum()))
        return triplets

    def next_batch(self) -> np.ndarray:
        """[batch_size, 3] pool indices from the current triplets: half (rounded up) class negatives and
        half human negatives when there are any, each kind in shuffled cycles."""
        if self.triplets is None:
            raise ValueError("call refresh(embeddings) before next_batch()")
        if len(self._queues) == 1:
            return self._queues[0].take(self.batch_size)
        n_human = self.batch_size // 2
        return np.concatenate([self._queues[0].take(self.batch_size - n_human),
                               self._queues[1].take(n_human)])

    def batches(self, steps: int) -> Iterator[np.ndarray]:
        """`steps` batches from the current triplets."""
        for _ in range(steps):
            yield self.next_batch()

    def run(self, embed_fn: Callable, total_steps: int) -> Iterator[np.ndarray]:
        """Yields `total_steps` batches, refreshing triplets from `embed_fn()` every `refresh_every`."""
        done = 0
        while done < total_steps:
            out = embed_fn()
            emb, hn_emb = out if isinstance(out, tuple) else (out, None)
            self.refresh(emb, hn_emb)
            steps = min(self.refresh_every, total_steps - done)
            yield from self.batches(steps)
            done += steps


class _Cycle:
    """Endless shuffled passes over the rows of a table."""

    def __init__(self, table: np.ndarray, rng: np.random.Generator):
        self.table, self.rng = table, rng
        self.order = rng.permutation(len(table))
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        rows = []
        while k > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.table)), 0
            got = self.order[self.pos:self.pos + k]
            rows.append(got)
            self.pos += len(got)
            k -= len(got)
        return self.table[np.concatenate(rows)]
