"""Inverted-file (IVF) index in stock TF ops: scan only the lists whose centroids are nearest the query.

Build time (numpy + scikit-learn, never in the served graph): k-means centroids from
scikit-learn's `KMeans` on a sample of the gallery, every item assigned to its nearest centroid, items stored
sorted by list with `list_offsets` [nlist + 1] (list j = rows offsets[j]:offsets[j+1]).

Search (stock ops: matmul, top_k, RaggedRange, gather): per query, the nprobe nearest centroids, then the
exact float32 squared distance to every item of those lists and a top-k. Queries are processed one by
one (`tf.map_fn`), so memory stays at one query's candidates whatever the batch size. With
nprobe = nlist the search is exhaustive and returns the exact index's answers.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.retrieval.index import SearchIndex, _static_int, row_sq_norms, squared_distances_tf

# k-means runs on at most this many sampled items per list (faiss warns below 39).
TRAIN_SAMPLES_PER_LIST = 40
KMEANS_ITERATIONS = 20


def default_nlist(size: int) -> int:
    """About 2 * sqrt(N) lists (lists of ~sqrt(N) / 2 items), never more than N / 8, at least 1."""
    return int(max(1, min(round(2 * math.sqrt(size)), size // 8)))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query by default: 1/32 of them (at least 8, at most nlist)."""
    return int(min(nlist, max(8, round(nlist / 32))))


def train_centroids(embeddings: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """k-means centroids [nlist, D]: scikit-learn's Lloyd k-means from random init on a sample of
    TRAIN_SAMPLES_PER_LIST * nlist items (k-means++ init costs more than the iterations at this k)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    sample = embeddings
    if len(embeddings) > TRAIN_SAMPLES_PER_LIST * nlist:
        sample = embeddings[np.sort(rng.choice(len(embeddings), TRAIN_SAMPLES_PER_LIST * nlist, replace=False))]
    kmeans = KMeans(n_clusters=nlist, init="random", n_init=1, max_iter=KMEANS_ITERATIONS, random_state=seed)
    kmeans.fit(sample)
    return kmeans.cluster_centers_.astype(np.float32)


def assign_to_lists(embeddings: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centroid for every item (int32 [N]), in chunks to bound memory."""
    c_norms = row_sq_norms(centroids)
    out = np.empty(len(embeddings), np.int32)
    for start in range(0, len(embeddings), chunk):
        block = embeddings[start:start + chunk]
        d = c_norms[None, :] - 2.0 * (block @ centroids.T)  # ||x||^2 is constant per row
        out[start:start + chunk] = d.argmin(axis=1)
    return out


class IVFIndex(SearchIndex):
    """IVF-Flat: k-means coarse quantiser + exact distances within the probed lists."""

    kind = "ivf"

    def __init__(self, embeddings: np.ndarray, ids, centroids: np.ndarray, nprobe: int,
                 assignments: np.ndarray | None = None, seed: int = 0, name: str = "ivf_index"):
        super().__init__(ids, embeddings.shape[1], name)
        self.nlist = int(len(centroids))
        if not 1 <= nprobe <= self.nlist:
            raise ValueError(f"nprobe must be in [1, nlist={self.nlist}], got {nprobe!r}")
        self.nprobe = int(nprobe)
        self.seed = int(seed)
        if assignments is None:
            assignments = assign_to_lists(embeddings, centroids)
        order = np.argsort(assignments, kind="stable")  # within a list, gallery order (ties -> smaller index)
        counts = np.bincount(assignments, minlength=self.nlist)
        self.max_list_size = int(counts.max())
        logging.info("IVF index: %d items in %d lists (sizes min %d, median %d, max %d), nprobe %d",
                     len(embeddings), self.nlist, counts.min(), int(np.median(counts)), counts.max(),
                     self.nprobe)
        self.centroids = tf.Variable(centroids, trainable=False, name="ivf_centroids")
        self.centroid_sq_norms = tf.Variable(row_sq_norms(centroids), trainable=False,
                                             name="ivf_centroid_sq_norms")
        self.list_offsets = tf.Variable(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
                                        trainable=False, name="ivf_list_offsets")
        sorted_embeddings = embeddings[order]
        self.embeddings = tf.Variable(sorted_embeddings, trainable=False, name="ivf_sorted_embeddings")
        self.sq_norms = tf.Variable(row_sq_norms(sorted_embeddings), trainable=False, name="ivf_sorted_sq_norms")
        self.positions = tf.Variable(order.astype(np.int32), trainable=False, name="ivf_sorted_positions")

    def _extra_config(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "seed": self.seed,
                "max_list_size": self.max_list_size}

    def _check_nprobe(self, nprobe):
        if nprobe is None:
            return tf.constant(self.nprobe, tf.int32)
        static = _static_int(nprobe)
        if static is not None:
            if isinstance(static, bool) or not isinstance(static, (int, np.integer)) \
                    or not 1 <= static <= self.nlist:
                raise ValueError(f"nprobe must be an int in [1, nlist={self.nlist}], got {nprobe!r}")
            return tf.constant(int(static), tf.int32)
        nprobe = tf.cast(nprobe, tf.int32)
        checks = [tf.debugging.assert_greater_equal(nprobe, 1, message="nprobe must be >= 1"),
                  tf.debugging.assert_less_equal(nprobe, self.nlist,
                                                 message=f"nprobe must be <= nlist={self.nlist}")]
        with tf.control_dependencies(checks):
            return tf.identity(nprobe)

    def _search(self, queries, k, nprobe):
        nprobe = self._check_nprobe(nprobe)
        q_norms = tf.reduce_sum(queries * queries, axis=1)
        coarse = squared_distances_tf(queries, q_norms, self.centroids, self.centroid_sq_norms)
        _, probes = tf.math.top_k(-coarse, k=nprobe)  # [B, nprobe] nearest lists first

        def search_one(args):
            query, q_norm, lists = args
            starts = tf.gather(self.list_offsets, lists)
            ends = tf.gather(self.list_offsets, lists + 1)
            rows = tf.ragged.range(starts, ends).flat_values  # sorted-storage rows of the probed lists
            vectors = tf.gather(self.embeddings, rows)
            d = tf.maximum(q_norm + tf.gather(self.sq_norms, rows)
                           - 2.0 * tf.linalg.matvec(vectors, query), 0.0)
            missing = tf.maximum(k - tf.size(rows), 0)  # fewer candidates than k: pad
            d = tf.concat([d, tf.fill([missing], np.float32(np.inf))], 0)
            rows = tf.concat([rows, tf.fill([missing], -1)], 0)
            neg, best = tf.math.top_k(-d, k=k)
            best_rows = tf.gather(rows, best)
            positions = tf.where(best_rows >= 0, tf.gather(self.positions, tf.maximum(best_rows, 0)), -1)
            return -neg, positions

        return tf.map_fn(search_one, (queries, q_norms, probes),
                         fn_output_signature=(tf.TensorSpec([k], tf.float32), tf.TensorSpec([k], tf.int32)))
