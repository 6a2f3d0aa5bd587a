"""Nearest-neighbour indexes over an embedding gallery, searchable from Python and from a SavedModel.

A `SearchIndex` is a `tf.Module` whose arrays are `tf.Variable`s (so `tf.saved_model.save` and
`keras.export.ExportArchive` track them and the graph stays small) and whose `search` builds stock TF
ops only, so the same code answers a Python `lookup` and a served `lookup` signature running under the
TF1 session loader that TensorFlow Serving uses.

Scores are squared Euclidean distances in float32, ascending (smaller = closer); ties go to the smaller
gallery position (`tf.math.top_k` keeps the lower index first). Results a search cannot fill (an IVF
search whose probed lists hold fewer than k items) are padded with distance +inf, position -1, id "".

`ExactIndex` (this module) compares every query with every item: one [B, N] matmul and a top-k.
`IVFIndex` (`finegrain_tf.retrieval.ivf`) scans only the inverted lists nearest to the query.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from finegrain_tf.metrics.retrieval import check_embeddings
from finegrain_tf.utils import checks

PAD_ID = ""


def _static_int(value):
    """`value` as a Python int when it is one (or a numpy / eager scalar); None for a symbolic tensor."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if not tf.executing_eagerly() or not hasattr(value, "numpy"):
            return None
        value = value.numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value


class SearchIndex(tf.Module):
    """Base class: holds the ids and implements input checks; subclasses implement `_search`.

    Attributes:
      kind: "exact" or "ivf".
      size: number of gallery items N.
      dim: embedding dimension D.
      config: JSON-able description ({"kind", "size", "dim", "distance", ...}).
    """

    kind = "base"

    def __init__(self, ids, dim: int, name: str):
        super().__init__(name=name)
        self.size = len(ids)
        self.dim = int(dim)
        self.ids = tf.Variable(np.array(ids, dtype=object), trainable=False, dtype=tf.string,
                               name="gallery_ids")

    @property
    def config(self) -> dict:
        return {"kind": self.kind, "size": self.size, "dim": self.dim, "distance": "squared_euclidean",
                **self._extra_config()}

    def _extra_config(self) -> dict:
        return {}

    def search(self, queries, k: int, nprobe=None):
        """The k nearest gallery items of each query.

        Args:
          queries: [B, D] float (numpy or tensor; a symbolic tensor inside a tf.function / export).
          k: Python int, 1 <= k <= size.
          nprobe: IVF only: inverted lists scanned per query (None = the index's default; an int or a
            scalar int32 tensor, checked against [1, nlist]). Ignored by the exact index.

        Returns:
          (scores [B, k] float32 squared Euclidean distances ascending, ids [B, k] string).
        """
        distances, positions = self.search_positions(queries, k, nprobe)
        ids = tf.where(positions >= 0, tf.gather(self.ids, tf.maximum(positions, 0)), PAD_ID)
        return distances, ids

    def search_positions(self, queries, k: int, nprobe=None):
        """Like `search` but returns gallery positions (int32 [B, k], -1 for padding) instead of ids."""
        k = checks.positive_int(_static_int(k), "k")
        if k > self.size:
            raise ValueError(f"k={k} is larger than the gallery ({self.size} items)")
        return self._search(self._check_queries(queries), k, nprobe)

    def _check_queries(self, queries):
        static = queries
        if isinstance(queries, (tf.Tensor, tf.Variable)):
            static = queries.numpy() if tf.executing_eagerly() and hasattr(queries, "numpy") else None
        if static is not None:  # eager: a ValueError naming the problem
            return tf.constant(check_embeddings(static, "queries", self.dim, dtype=np.float32))
        queries = tf.cast(queries, tf.float32)
        if queries.shape.rank is not None and queries.shape.rank != 2:
            raise ValueError(f"queries must be [B, D], got shape {queries.shape}")
        if queries.shape[-1] is not None and queries.shape[-1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[-1]}, the index has {self.dim}")
        checked = tf.debugging.check_numerics(queries, "lookup queries contain NaN or Inf")
        return tf.ensure_shape(checked, [None, self.dim])

    def _search(self, queries, k, nprobe):
        raise NotImplementedError


def squared_distances_tf(queries, sq_norms_q, vectors, sq_norms_v):
    """||q_i - v_j||^2 [B, M] from one matmul (float32, clipped at 0)."""
    d = sq_norms_q[:, None] + sq_norms_v[None, :] - 2.0 * tf.matmul(queries, vectors, transpose_b=True)
    return tf.maximum(d, 0.0)


def row_sq_norms(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """||x_i||^2 accumulated in float64, in row blocks (no float64 copy of a large gallery)."""
    out = np.empty(len(x), np.float32)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].astype(np.float64)
        out[start:start + chunk] = np.einsum("ij,ij->i", block, block)
    return out


class ExactIndex(SearchIndex):
    """Brute force: every query against every gallery item (O(N * D) per query)."""

    kind = "exact"

    def __init__(self, embeddings: np.ndarray, ids, name: str = "exact_index"):
        super().__init__(ids, embeddings.shape[1], name)
        self.embeddings = tf.Variable(embeddings, trainable=False, name="gallery_embeddings")
        self.sq_norms = tf.Variable(row_sq_norms(embeddings), trainable=False, name="gallery_sq_norms")

    def _search(self, queries, k, nprobe):
        del nprobe  # every item is compared
        q_norms = tf.reduce_sum(queries * queries, axis=1)
        d = squared_distances_tf(queries, q_norms, self.embeddings, self.sq_norms)
        neg, positions = tf.math.top_k(-d, k=k)
        return -neg, positions
