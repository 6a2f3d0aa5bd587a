"""Quasi-online triplet sampling with local positives and human hard negatives (seed 000 §2.3.2–2.3.3,
§2.4.1, §2.4.3, Fig 2.6).

Every `refresh_every` steps the embeddings of the whole training set are extracted, then for each
reference image x of class c:

1. Local positives (§2.3.3): the positive is drawn from the nearest `positive_fraction` (seed: 60%) of
   the other images of class c in feature space, so a class may spread along a manifold instead of
   being pulled into a sphere (eq 2.2). `positive_fraction=1` samples from the whole class.
2. Hard negatives (§2.3.2): negatives come from other classes, and only those violating the margin
   against the chosen positive are kept: ||f(x) - f(x_n)||^2 < ||f(x) - f(x_p)||^2 + m.
3. Human hard negatives (§2.4.3): images that were wrongly proposed for class c (false positives
   marked by labellers) are mixed in, in the same number as the class negatives.

Neighbour search uses chunked numpy matrix products (no Python loop over pairs); the loops run over
classes and anchor chunks only. `negatives="random"` with `positive_fraction=1` gives the naive
sampling of Triplet-Naive.

Triplets are indices into a pool: training items 0..n-1, then human hard negatives n..n+H-1.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from absl import logging

NEGATIVE_MODES = ("violating", "random")


@dataclasses.dataclass
class HardNegatives:
    """Human-labelled hard negatives: `items[i]` (image id or path) was wrongly proposed for `classes[i]`."""
    items: list
    classes: np.ndarray  # int64 [H]

    def __len__(self) -> int:
        return len(self.items)


_ITEM_KEYS = ("image", "path", "image_path", "id", "image_id", "file")
_CLASS_KEYS = ("class", "proposed_class", "label", "class_id", "class_name")


def _pick(row: dict, keys, path, line):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    raise ValueError(f"{path}: row {line} has none of the columns {list(keys)}: {row!r}")


def load_hard_negatives(path: str, class_names: Optional[Sequence[str]] = None) -> HardNegatives:
    """Reads a CSV (header row) or JSONL file of (image id/path, class it was wrongly proposed for).

    Columns/keys: one of image|path|image_path|id|image_id|file and one of
    class|proposed_class|label|class_id|class_name. A class is an int id or, with `class_names`, a name.
    """
    if not os.path.exists(path):
        raise ValueError(f"hard-negative file not found: {path!r}")
    rows = []
    if path.endswith((".jsonl", ".json")):
        with open(path) as f:
            for line, text in enumerate(f, 1):
                if text.strip():
                    rows.append((line, json.loads(text)))
    else:
        with open(path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), 2):
                rows.append((line, row))
    index = {name: i for i, name in enumerate(class_names)} if class_names is not None else None
    items, classes = [], []
    for line, row in rows:
        item = _pick(row, _ITEM_KEYS, path, line)
        cls = _pick(row, _CLASS_KEYS, path, line)
        if index is not None and str(cls) in index:
            cls = index[str(cls)]
        else:
            try:
                cls = int(cls)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {line}: unknown class {cls!r}") from None
        if cls < 0 or (class_names is not None and cls >= len(class_names)):
            raise ValueError(f"{path}: row {line}: class {cls!r} out of range")
        items.append(str(item))
        classes.append(cls)
    return HardNegatives(items=items, classes=np.asarray(classes, np.int64))


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
        return np.stack([self.anchors, self.positives, self.negatives], axis=1)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def local_positive_neighbours(embeddings: np.ndarray, labels: np.ndarray,
                              positive_fraction: float = 0.6) -> list:
    """Per item, the indices of its nearest ceil(fraction * (n_c - 1)) same-class neighbours (itself
    excluded), nearest first. Items alone in their class get an empty array."""
    if not 0.0 < positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction!r}")
    x = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1)
    out = [np.zeros((0,), np.int64)] * len(labels)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_c = len(idx)
        if n_c < 2:
            continue
        k = max(1, int(math.ceil(positive_fraction * (n_c - 1))))
        for start in range(0, n_c, 2048):  # chunked for very large classes
            rows = idx[start:start + 2048]
            d = _sq_dists(x[rows], x[idx])
            d[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf
            nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
            for r, row in enumerate(rows):
                out[row] = idx[nearest[r]]
    return out


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
      negatives: "violating" (keep only margin violators, §2.3.2) or "random" (no filter).
      triplets_per_anchor: positives (each with one class negative) drawn per reference image.
      hard_negative_embeddings, hard_negative_classes: human hard negatives [H, D] and the class each
        was wrongly proposed for [H]; for every kept class negative of an anchor of class c one human
        negative of c is added (same anchor and positive), when c has any.
      filter_human_negatives: also require human negatives to violate the margin.
    """
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"negatives={negatives!r} is not one of {list(NEGATIVE_MODES)}")
    if triplets_per_anchor < 1:
        raise ValueError(f"triplets_per_anchor must be >= 1, got {triplets_per_anchor!r}")
    rng = np.random.default_rng(seed)
    x = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    n = len(labels)
    if x.shape[0] != n:
        raise ValueError(f"embeddings {x.shape} and labels {labels.shape} disagree")
    neighbours = local_positive_neighbours(x, labels, positive_fraction)
    counts = np.array([len(nb) for nb in neighbours])
    anchors = np.repeat(np.flatnonzero(counts > 0), triplets_per_anchor)
    pick = (rng.random(len(anchors)) * counts[anchors]).astype(np.int64)
    positives = np.array([neighbours[a][j] for a, j in zip(anchors, pick)], np.int64)

    kept_a, kept_p, kept_n = [], [], []
    for start in range(0, len(anchors), chunk_size):
        a = anchors[start:start + chunk_size]
        p = positives[start:start + chunk_size]
        d_ap = ((x[a] - x[p]) ** 2).sum(1)
        # Candidates are visited in a fresh random order per chunk, so the first acceptable one is a
        # uniform draw among the acceptable negatives of each anchor. Blocks of the permuted pool are
        # scanned until every anchor has one: exact, and cheap while violators are plentiful.
        perm = rng.permutation(n)
        todo = np.arange(len(a))
        for b0 in range(0, n, block_size):
            cols = perm[b0:b0 + block_size]
            ok = labels[cols][None, :] != labels[a[todo]][:, None]
            if negatives == "violating":
                ok &= _sq_dists(x[a[todo]], x[cols]) < (d_ap[todo] + margin)[:, None]
            found = ok.any(axis=1)
            first = ok.argmax(axis=1)
            kept_a.append(a[todo[found]])
            kept_p.append(p[todo[found]])
            kept_n.append(cols[first[found]])
            todo = todo[~found]
            if not len(todo):
                break
    a = np.concatenate(kept_a) if kept_a else np.zeros(0, np.int64)
    p = np.concatenate(kept_p) if kept_p else np.zeros(0, np.int64)
    neg = np.concatenate(kept_n).astype(np.int64) if kept_n else np.zeros(0, np.int64)
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

    Usage:
        sampler = QuasiOnlineTripletSampler(train_labels, batch_size=50, refresh_every=1000,
                                            hard_negative_classes=hn.classes)
        for step, batch in enumerate(sampler.run(embed_fn, total_steps)):
            ...  # batch: [batch_size, 3] pool indices (anchor, positive, negative)

    `embed_fn()` returns the embeddings of the training set [n, D], or a pair (train [n, D],
    human hard negatives [H, D]).
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
        if not 0.0 < positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction!r}")
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

    def refresh(self, embeddings, hard_negative_embeddings=None) -> TripletSet:
        """Samples a new list of triplets from the current embeddings."""
        use_hn = self.hard_negative_classes is not None and hard_negative_embeddings is not None
        self.triplets = sample_triplets(
                embeddings, self.labels, self.positive_fraction, self.margin, self.negatives,
                self.triplets_per_anchor,
                hard_negative_embeddings if use_hn else None,
                self.hard_negative_classes if use_hn else None,
                self.filter_human_negatives, seed=int(self._rng.integers(2 ** 31)))
        self.rounds += 1
        logging.info("triplet refresh %d: %d triplets (%d with human negatives)", self.rounds,
                     len(self.triplets), int(self.triplets.human.sum()))
        return self.triplets

    def batches(self, steps: int) -> Iterator[np.ndarray]:
        """`steps` batches [batch_size, 3] cycling over the current triplets in shuffled order."""
        if self.triplets is None:
            raise ValueError("call refresh(embeddings) before batches()")
        table = self.triplets.as_array()
        if len(table) == 0:
            # Nothing violates the margin: fall back to a fresh naive round so training can go on.
            logging.warning("no triplet violates the margin; sampling random negatives this round")
            return
        order = self._rng.permutation(len(table))
        pos = 0
        for _ in range(steps):
            if pos + self.batch_size > len(order):
                order = np.concatenate([order[pos:], self._rng.permutation(len(table))])
                pos = 0
            yield table[order[pos:pos + self.batch_size]]
            pos += self.batch_size

    def run(self, embed_fn: Callable, total_steps: int) -> Iterator[np.ndarray]:
        """Yields `total_steps` batches, refreshing triplets from `embed_fn()` every `refresh_every`."""
        done = 0
        while done < total_steps:
            out = embed_fn()
            emb, hn_emb = out if isinstance(out, tuple) else (out, None)
            self.refresh(emb, hn_emb)
            steps = min(self.refresh_every, total_steps - done)
            produced = 0
            for batch in self.batches(steps):
                produced += 1
                yield batch
            if produced < steps:  # no triplet this round: naive sampling for the rest of the round
                saved = self.negatives
                self.negatives = "random"
                try:
                    self.refresh(emb, hn_emb)
                    yield from self.batches(steps - produced)
                finally:
                    self.negatives = saved
            done += steps
