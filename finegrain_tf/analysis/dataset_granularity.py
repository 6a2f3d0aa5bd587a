"""Dataset granularity measures (seed 000, chapter 6, §6.2).

A labelled dataset S = (X, Y) together with a distance function d is mapped to a number
g(S, d); larger means *finer* grained (§6.2.1).  Implemented measures:

* ``"rs"``     Revised Silhouette, eq. (6.2):  mean_i a(x_i) / b(x_i)
* ``"rsm"``    Revised Silhouette with Medoids, eq. (6.3): mean_i d(x_i, c_i) / d(x_i, c'_i)
* ``"rank"``   Ranking index, eq. (6.4): mean_i n/(n-1) * (1 - AP_i), with the *standard* average
  precision AP_i = (1/|R_i|) * sum_j j / R_ij (the seed's text dropped the 1/|R_i|).
* ``"rankm"``  Ranking with Medoids, eq. (6.5): mean_i k/(k-1) * (1 - 1/R_ic), R_ic the 1-based rank
  of x_i's own class medoid among all k medoids by distance to x_i.  The seed's default measure.
* ``"silhouette"``  the Silhouette index, eq. (6.1), reported only as a *baseline*: it runs the
  other way (higher = better separated = coarser) and is not granularity consistent, which is why
  the seed rejects it as a granularity measure.

Definitions used throughout (they make the measures well defined on ties):

* a(x_i) = mean distance from x_i to the *other* members of its class; b(x_i) = the smallest mean
  distance from x_i to the members of another class.
* The medoid of a class is the member with the smallest sum of distances to its classmates; exact
  ties (within a relative 1e-12, i.e. floating-point round-off) go to the member with the lowest
  sample index, so the choice does not depend on class ids (isomorphism invariance).
* Ranks are pessimistic on ties: an item's rank is the number of candidates at a distance <= its
  own (R_ic = 1 + #{other medoids c': d(x_i, c') <= d(x_i, c_i)}; for Rank, R_ij counts all other
  samples with d <= d_ij and j counts the classmates with d <= d_ij — the same tie rule as
  ``sklearn.metrics.average_precision_score``).
* Ratios with a zero denominator: 0/0 := 1 and a/0 := inf (only possible with duplicated points
  across classes).

Findings (kept, not "fixed"): RSM and RankM are granularity consistent (Definition 4) only while
the class medoids stay the same — a consistent transformation that moves a medoid can raise both
(explicit counterexample in tests/analysis/test_granularity_axioms.py), contrary to the seed's
Proposition 2.  On the two-Gaussian simulation (Fig. 6.4, studies/granularity_two_gaussians.py) RSM
first *rises* (1.005 at m=0 -> 1.067 at m=1) before falling: its mean of ratios is dominated by
samples that sit next to the other class's medoid.  RS, Rank and RankM decrease monotonically.

Computation is vectorised and chunked (blocks of at most ``chunk_size`` rows) so memory stays
bounded: RSM and RankM need the k medoids (pairwise distances within each class, in row blocks)
and then O(nk) distance evaluations; RS, Rank and the silhouette need all O(n^2) distances.
Everything is computed in float64.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from finegrain_tf.utils import checks

MEASURES = ("rs", "rsm", "rank", "rankm", "silhouette")
METRICS = ("euclidean", "sqeuclidean", "cosine", "precomputed")

# Relative tolerance for ties between medoid candidates (pure floating-point round-off).
_MEDOID_RTOL = 1e-12
# Classes up to this size get their medoid from single-threaded BLAS calls.
_SMALL_CLASS = 1024
# Default memory budget of one distance block, in float64 elements (32 MiB).
_BLOCK_ELEMENTS = 1 << 22


class _Distances:
    """Row/column blocks of the distance matrix of one dataset, in float64."""

    def __init__(self, features: np.ndarray, metric: str):
        self.metric = metric
        if metric == "precomputed":
            self.x = features
            self.sqnorm = None
        elif metric in ("euclidean", "sqeuclidean"):
            # Centring reduces the round-off of the ||a||^2 + ||b||^2 - 2 a.b expansion.
            self.x = features
            self.mu = features.mean(axis=0, dtype=np.float64)
            self.sqnorm = np.empty(features.shape[0])
            for start in range(0, features.shape[0], 65536):
                xc = self._rows(np.arange(start, min(features.shape[0], start + 65536)))
                self.sqnorm[start:start + xc.shape[0]] = np.einsum("ij,ij->i", xc, xc)
        else:  # cosine
            x = np.asarray(features, dtype=np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x))
            zero = np.flatnonzero(norms == 0)
            if zero.size:
                raise ValueError(
                    f"metric='cosine' is undefined for all-zero feature rows, e.g. row {int(zero[0])}")
            self.x = x / norms[:, None]
            self.sqnorm = None

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        if idx.size and idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1):
            out = np.asarray(self.x[idx[0]:idx[-1] + 1], dtype=np.float64)  # a view, no gather
        else:
            out = np.asarray(self.x[idx], dtype=np.float64)
        if self.metric in ("euclidean", "sqeuclidean"):
            out = out - self.mu
        return out

    def columns(self, cols: np.ndarray):
        """Pre-gathered column data for repeated :meth:`block` calls against the same columns."""
        if self.metric == "precomputed":
            return None
        return self._rows(cols)

    def block(self, rows: np.ndarray, cols: np.ndarray, col_data=None) -> np.ndarray:
        """Distances d(x_r, x_c) for r in rows, c in cols as a [len(rows), len(cols)] array."""
        if self.metric == "precomputed":
            return np.asarray(self.x[np.ix_(rows, cols)], dtype=np.float64)
        xr = self._rows(rows)
        xc = self._rows(cols) if col_data is None else col_data
        if self.metric == "cosine":
            out = xr @ xc.T
            np.subtract(1.0, out, out=out)
            np.maximum(out, 0.0, out=out)
        else:
            out = xr @ xc.T
            out *= -2.0
            out += self.sqnorm[rows][:, None]
            out += self.sqnorm[cols][None, :]
            np.maximum(out, 0.0, out=out)
            if self.metric == "euclidean":
                np.sqrt(out, out=out)
        # d(x, x) = 0 exactly (the expansion above leaves round-off on the diagonal).
        sorter = np.argsort(rows, kind="stable")
        at = np.minimum(np.searchsorted(rows, cols, sorter=sorter), rows.size - 1)
        hit = rows[sorter[at]] == cols
        if hit.any():
            out[sorter[at[hit]], np.flatnonzero(hit)] = 0.0
        return out


def _validate(features, labels, metric: str):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array [n, D] (or [n, n] distances), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got shape {y.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"features contain NaN/inf values, e.g. at index {tuple(int(v) for v in bad)}")
    if metric == "precomputed":
        if x.shape[0] != x.shape[1]:
            raise ValueError(f"metric='precomputed' needs a square [n, n] distance matrix, got {x.shape}")
        if np.any(x < 0):
            raise ValueError("precomputed distances must be non-negative, got a minimum of "
                             f"{float(x.min())}")
        if np.any(np.diagonal(x) != 0):
            raise ValueError("precomputed distances must have a zero diagonal, got d(x_i, x_i) = "
                             f"{float(np.diagonal(x)[np.diagonal(x) != 0][0])}")
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"granularity needs at least 2 classes, got {classes.size} ({classes.tolist()})")
    single = classes[counts < 2]
    if single.size:
        raise ValueError(
            f"every class needs at least 2 samples; classes with a single sample: {single[:10].tolist()}"
            + (" ..." if single.size > 10 else ""))
    return x, y_idx.astype(np.int64), counts.astype(np.int64)


def _row_chunks(n: int, chunk_size: int | None, ncols: int):
    if chunk_size is None:
        step = max(1, _BLOCK_ELEMENTS // max(ncols, 1))
    else:
        step = checks.positive_int(chunk_size, "chunk_size")
    for start in range(0, n, step):
        yield np.arange(start, min(n, start + step))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    r = np.where(den == 0, np.where(num == 0, 1.0, np.inf), r)
    return r


_CONTROLLER = []


def _single_thread_blas():
    """Small BLAS calls run far faster single-threaded (no thread hand-off), above all on busy CPUs."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def class_medoids(dist: _Distances, y_idx: np.ndarray, k: int, chunk_size: int | None = None) -> np.ndarray:
    """Sample index of each class medoid (smallest sum of distances to its classmates).

    Pairwise distances are formed per class in row blocks ([chunk, class size]); classes are small
    compared with n, so this costs sum_c |C_c|^2 distance evaluations.
    """
    medoids = np.empty(k, dtype=np.int64)
    order = np.argsort(y_idx, kind="stable")
    bounds = np.searchsorted(y_idx[order], np.arange(k + 1))
    sizes = np.diff(bounds)

    def one(c):
        members = order[bounds[c]:bounds[c + 1]]  # increasing sample index
        sums = np.empty(members.size, dtype=np.float64)
        for pos in _row_chunks(members.size, chunk_size, members.size):
            sums[pos] = dist.block(members[pos], members).sum(axis=1)
        best = sums.min()
        medoids[c] = members[np.flatnonzero(sums <= best + abs(best) * _MEDOID_RTOL)[0]]

    small = sizes <= _SMALL_CLASS
    with _single_thread_blas() if small.sum() >= 64 else contextlib.nullcontext():
        for c in np.flatnonzero(small):
            one(c)
    for c in np.flatnonzero(~small):
        one(c)
    return medoids


def _medoid_terms(dist, y_idx, k, measure, chunk_size):
    medoids = class_medoids(dist, y_idx, k, chunk_size)
    medoid_data = dist.columns(medoids)
    n = y_idx.size
    out = np.empty(n, dtype=np.float64)
    for rows in _row_chunks(n, chunk_size, k):
        dm = dist.block(rows, medoids, medoid_data)  # [b, k]: O(nk) distance evaluations in total
        own = dm[np.arange(rows.size), y_idx[rows]]
        dm[np.arange(rows.size), y_idx[rows]] = np.inf  # other medoids only
        if measure == "rsm":
            out[rows] = _safe_ratio(own, dm.min(axis=1))
        else:  # rankm
            rank = 1 + np.count_nonzero(dm <= own[:, None], axis=1)
            out[rows] = k / (k - 1) * (1.0 - 1.0 / rank)
    return out


def _silhouette_like_terms(dist, y_idx, counts, measure, chunk_size):
    n, k = y_idx.size, counts.size
    order = np.argsort(y_idx, kind="stable")
    starts = np.searchsorted(y_idx[order], np.arange(k))
    out = np.empty(n, dtype=np.float64)
    order_data = dist.columns(order)
    for rows in _row_chunks(n, chunk_size, n):
        sums = np.add.reduceat(dist.block(rows, order, order_data), starts, axis=1)  # [b, k]
        r = np.arange(rows.size)
        own = y_idx[rows]
        a = sums[r, own] / (counts[own] - 1)
        means = sums / counts[None, :]
        means[r, own] = np.inf
        b = means.min(axis=1)
        if measure == "rs":
            out[rows] = _safe_ratio(a, b)
        else:  # silhouette: (b - a) / max(a, b), 0 when both are 0 (as sklearn)
            den = np.maximum(a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (b - a) / den
            out[rows] = np.where(den == 0, 0.0, s)
    return out


def _rank_terms(dist, y_idx, counts, chunk_size):
    """Eq. (6.4) per sample.  For x_i with distances d_i to all other samples and classmates P_i:
    R_ij = #{q != i: d_iq <= d_ij} and j = #{p in P_i: d_ip <= d_ij} for each classmate (pessimistic
    ties), AP_i = mean_j j / R_ij.  Each row is sorted once (O(n log n)); counts come from binary
    searches of the sorted classmate distances into the sorted row."""
    n = y_idx.size
    out = np.empty(n, dtype=np.float64)
    order = np.argsort(y_idx, kind="stable")
    bounds = np.searchsorted(y_idx[order], np.arange(counts.size + 1))
    all_idx = np.arange(n)
    all_data = dist.columns(all_idx)
    for rows in _row_chunks(n, chunk_size, n):
        d = dist.block(rows, all_idx, all_data)
        d[np.arange(rows.size), rows] = -np.inf  # self sorts first and is not counted below
        row_sorted = np.sort(d, axis=1)
        for r, i in enumerate(rows):
            c = y_idx[i]
            mates = order[bounds[c]:bounds[c + 1]]
            pd = np.sort(d[r, mates])[1:]  # classmates' distances; the -inf of self dropped
            r_ij = np.searchsorted(row_sorted[r], pd, side="right") - 1.0
            j = np.searchsorted(pd, pd, side="right")
            ap = np.mean(j / r_ij)
            out[i] = n / (n - 1.0) * (1.0 - ap)
    return out


def granularity_per_sample(features, labels, measure: str = "rankm", metric: str = "euclidean",
                           chunk_size: int | None = None) -> np.ndarray:
    """Per-sample terms of a granularity measure (their mean is :func:`granularity`)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    x, y_idx, counts = _validate(features, labels, metric)
    dist = _Distances(x, metric)
    if measure in ("rsm", "rankm"):
        return _medoid_terms(dist, y_idx, counts.size, measure, chunk_size)
    if measure in ("rs", "silhouette"):
        return _silhouette_like_terms(dist, y_idx, counts, measure, chunk_size)
    return _rank_terms(dist, y_idx, counts, chunk_size)


def granularity(features, labels, measure: str = "rankm", metric: str = "euclidean",
                chunk_size: int | None = None) -> float:
    """Dataset granularity g(S, d) of seed 000 §6.2 (larger = finer grained).

    Args:
      features: [n, D] features (any float dtype; computed in float64), or with
        ``metric="precomputed"`` an [n, n] distance matrix with zero diagonal.
      labels: [n] class labels (any hashable integer/string values; at least 2 classes, and every
        class needs at least 2 samples).
      measure: "rankm" (eq. 6.5, the seed's choice), "rank" (eq. 6.4), "rsm" (eq. 6.3), "rs"
        (eq. 6.2) or "silhouette" (eq. 6.1; a baseline only — higher means *coarser* and it is not
        granularity consistent).
      metric: "euclidean" (the seed's d), "sqeuclidean", "cosine" (1 - cosine similarity) or
        "precomputed".
      chunk_size: rows per distance block; None picks blocks of about 32 MiB.

    Returns:
      The measure as a Python float.  RS/RSM are in [0, inf), Rank and RankM in [0, 1]; silhouette
      in [-1, 1].

    Raises:
      ValueError: unknown measure/metric, NaN features, fewer than 2 classes or a class with a
        single sample.
    """
    return float(np.mean(granularity_per_sample(features, labels, measure, metric, chunk_size)))


def medoid_indices(features, labels, metric: str = "euclidean", chunk_size: int | None = None):
    """(classes, sample indices of their medoids), classes in sorted order."""
    x, y_idx, counts = _validate(features, labels, metric)
    classes = np.unique(np.asarray(labels))
    return classes, class_medoids(_Distances(x, metric), y_idx, counts.size, chunk_size)



def plot_granularity(features, labels, per_sample: dict, path: str, max_classes: int = 40) -> str:
    """Two panels: the features in 2-D (PCA, coloured by class) and, for the first measure of
    `per_sample` ({measure: per-sample terms}), the mean term of every class, sorted (axis from 0);
    the title lists every measure's dataset value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    if not per_sample:
        raise ValueError("per_sample is empty: give at least one measure")
    x = np.asarray(features, np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels)
    classes, y_idx = np.unique(labels, return_inverse=True)
    xy = PCA(n_components=2).fit_transform(x) if x.shape[1] > 2 else np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
    measure, terms = next(iter(per_sample.items()))
    per_class = np.bincount(y_idx, weights=np.asarray(terms, np.float64)) / np.bincount(y_idx)
    order = np.argsort(per_class)[::-1][:max_classes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    left.scatter(xy[:, 0], xy[:, 1], c=y_idx, cmap="tab20", s=8)
    left.set_title(f"features (PCA to 2-D), {len(classes)} classes, {len(labels)} images", fontsize=9)
    right.bar(range(len(order)), per_class[order], color="tab:purple")
    right.set_xticks(range(len(order)))
    right.set_xticklabels([str(classes[i]) for i in order], rotation=90, fontsize=7)
    right.set_ylim(min(0.0, float(per_class.min()) * 1.1), max(float(per_class.max()) * 1.1, 1e-9))
    right.set_ylabel(f"class mean of the {measure} terms")
    right.set_title(f"per-class {measure} (finest first" + (f", top {max_classes}" if len(classes) > max_classes
                                                             else "") + ")", fontsize=9)
    fig.suptitle("granularity: " + ", ".join(f"{m} = {float(np.mean(t)):.4f}" for m, t in per_sample.items()),
                 fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
