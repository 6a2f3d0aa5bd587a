"""Scoring an embedding on human-rated triplets (seed 004 §5.3, the Wang set).

Only decisive triplets (A closer / B closer) have a right answer; the embedding is right when the
candidate the raters chose is nearer to the query (`finegrain_tf.metrics.triplet_accuracy`, ties
count half).
"""

from __future__ import annotations

import numpy as np

from finegrain_tf.analysis.fuzziness import photo_embeddings
from finegrain_tf.data.geo import GeoPhotos
from finegrain_tf.data.rated_triplets import load_rated_triplets
from finegrain_tf.metrics.retrieval import triplet_accuracy


def rated_triplet_report(path: str, embedder, image_size: int) -> dict:
    """Triplet accuracy of `embedder` on the decisive triplets of a rated-triplet file."""
    rated = load_rated_triplets(path)
    if not rated.decisive.any():
        raise ValueError(f"{path}: no decisive triplet (a_closer / b_closer) to score")
    paths = sorted(set(rated.query) | set(rated.a) | set(rated.b))
    emb = photo_embeddings(embedder, GeoPhotos.from_paths(paths), image_size)
    position = {p: i for i, p in enumerate(paths)}
    keep = rated.decisive

    def take(names):
        return emb[[position[p] for p, k in zip(names, keep) if k]]

    return {"triplets": len(rated), "decisive": int(keep.sum()), "ratings": rated.counts(),
            "triplet_accuracy": triplet_accuracy(take(rated.query), take(rated.a), take(rated.b),
                                                 rated.closer)}
