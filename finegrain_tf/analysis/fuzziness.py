"""How fuzzy weak pair labels are (seed 004 §5.3.1, Table 5.7).

Given embeddings of photos (from an ImageNet backbone or a trained run) and a pair set (photo index
pairs with labels 1 = positive, 0 = negative), the statistics of Table 5.7 are:

- median and mean distance of positive pairs, median and mean distance of negative pairs,
- the percentage of ranking violations: over every triplet (p, p+, p-) whose positive pair (p, p+) and
  negative pair (p, p-) share their first photo p, the share with d(p, p+) > d(p, p-).

Distances are Euclidean by default ("squared" gives S of eq 3.2.1). `plot_histograms` draws the two
distance histograms.
"""

from __future__ import annotations

import numpy as np

METRICS = ("euclidean", "squared")


def pair_distances(embeddings, left, right, metric: str = "euclidean") -> np.ndarray:
    """Distances [P] between embeddings[left] and embeddings[right] (float64)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    for name, index in (("left", left), ("right", right)):
        if index.size and (index.min() < 0 or index.max() >= len(emb)):
            bad = index[(index < 0) | (index >= len(emb))][0]
            raise ValueError(f"{name} index {int(bad)} is outside the {len(emb)} embeddings")
    squared = ((emb[left] - emb[right]) ** 2).sum(axis=1)
    return squared if metric == "squared" else np.sqrt(squared)


def ranking_violations(anchors_pos, d_pos, anchors_neg, d_neg) -> tuple[int, int]:
    """(violations, triplets) over all (p, p+, p-) sharing the anchor p: d(p, p+) > d(p, p-).

    Exact and vectorised: positives and negatives are sorted together by (anchor, distance), a
    positive before an equally distant negative (a tie is not a violation); the negatives of its
    anchor that come before a positive are the ones it violates.
    """
    anchors_pos, anchors_neg = np.asarray(anchors_pos, np.int64), np.asarray(anchors_neg, np.int64)
    d_pos, d_neg = np.asarray(d_pos, np.float64), np.asarray(d_neg, np.float64)
    anchors = np.concatenate([anchors_neg, anchors_pos])
    dist = np.concatenate([d_neg, d_pos])
    is_neg = np.concatenate([np.ones(anchors_neg.size, bool), np.zeros(anchors_pos.size, bool)])
    order = np.lexsort((is_neg, dist, anchors))
    negatives_so_far = np.cumsum(is_neg[order])
    positive_slots = np.flatnonzero(~is_neg[order])
    sorted_neg_anchors = np.sort(anchors_neg)
    anchor_of_slot = anchors[order][positive_slots]
    before_group = np.searchsorted(sorted_neg_anchors, anchor_of_slot, side="left")
    group_size = np.searchsorted(sorted_neg_anchors, anchor_of_slot, side="right") - before_group
    violations = negatives_so_far[positive_slots] - before_group
    return int(violations.sum()), int(group_size.sum())


def fuzziness_statistics(embeddings, left, right, labels, metric: str = "euclidean") -> dict:
    """Table 5.7's row for one pair set (see the module docstring).

    Returns a dict: median/mean positive and negative distance, ranking_violations_percent,
    triplets, violations, positives, negatives, metric.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    labels = np.asarray(labels).reshape(-1)
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"labels must be 0 (negative) or 1 (positive), got values {np.unique(labels)!r}")
    left, right = np.asarray(left, np.int64).reshape(-1), np.asarray(right, np.int64).reshape(-1)
    if not left.shape == right.shape == labels.shape:
        raise ValueError(f"left, right and labels differ in length: {left.size}, {right.size}, {labels.size}")
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        raise ValueError(f"need both positive and negative pairs, got {int(pos.sum())} positives and "
                         f"{int(neg.sum())} negatives")
    d = pair_distances(embeddings, left, right, metric)
    violations, triplets = ranking_violations(left[pos], d[pos], left[neg], d[neg])
    return {
            "metric": metric,
            "positives": int(pos.sum()), "negatives": int(neg.sum()),
            "median_positive_distance": float(np.median(d[pos])),
            "median_negative_distance": float(np.median(d[neg])),
            "mean_positive_distance": float(d[pos].mean()),
            "mean_negative_distance": float(d[neg].mean()),
            "triplets": triplets, "violations": violations,
            "ranking_violations_percent": 100.0 * violations / triplets if triplets else float("nan"),
    }


def plot_histograms(path: str, embeddings, left, right, labels, metric: str = "euclidean",
                    title: str = "") -> str:
    """PNG of the positive and negative pair distance histograms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).reshape(-1)
    d = pair_distances(embeddings, left, right, metric)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(d.min(), d.max(), 40) if d.size and d.max() > d.min() else 20
    ax.hist(d[labels == 1], bins=bins, alpha=0.6, label="positive pairs", color="tab:blue")
    ax.hist(d[labels == 0], bins=bins, alpha=0.6, label="negative pairs", color="tab:red")
    ax.set_xlabel(f"{metric} distance between embeddings")
    ax.set_ylabel("pairs")
    ax.set_title(title or "pair distance histograms (Table 5.7)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# From photos to Table 5.7 (what `finegrain-analyze fuzziness` runs)


def photo_embeddings(embedder, photos, image_size: int, index=None, mean_pixel=None,
                     batch_size: int = 64) -> np.ndarray:
    """Embeddings [N, D] (float32) of `photos` (a `finegrain_tf.data.geo.GeoPhotos`) at `index`
    (all by default), preprocessed as the pairs task trains: square resize, optional mean pixel."""
    import tensorflow as tf

    from finegrain_tf.data.geo import square_resize

    subset = photos if index is None else photos.subset(np.asarray(index, np.int64))
    forward = tf.function(lambda x: embedder(x, training=False), reduce_retracing=True)
    ds = subset.image_dataset().map(lambda image: square_resize(image, image_size, mean_pixel))
    out = [np.asarray(forward(batch), np.float32).reshape(batch.shape[0], -1) for batch in ds.batch(batch_size)]
    if not out:
        raise ValueError("no photos to embed")
    return np.concatenate(out)


def photo_pair_fuzziness(photos, embedder, image_size: int, plot_path: str = "", **sampler_args) -> dict:
    """Table 5.7's row for the §5.1.1 pair set that `sample_geo_pairs(**sampler_args)` draws from
    `photos`, measured with `embedder` (a trained tower, or ImageNet features as in the thesis)."""
    from finegrain_tf.sampling.geo import sample_geo_pairs

    pairs = sample_geo_pairs(photos.latitudes, photos.longitudes, timestamps=photos.timestamps,
                             users=photos.users, **sampler_args)
    if len(pairs) == 0:
        raise ValueError(f"the pair set is empty (counts: {pairs.counts}); loosen the sampling options")
    index = np.unique(np.concatenate([pairs.left, pairs.right]))
    emb = photo_embeddings(embedder, photos, image_size, index)
    left, right = np.searchsorted(index, pairs.left), np.searchsorted(index, pairs.right)
    report = fuzziness_statistics(emb, left, right, pairs.labels)
    report["pair_counts"] = pairs.counts
    if plot_path:
        report["plot"] = plot_histograms(plot_path, emb, left, right, pairs.labels,
                                         title=f"pair distances ({len(pairs)} pairs)")
    return report
