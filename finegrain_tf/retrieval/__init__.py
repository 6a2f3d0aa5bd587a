"""finegrain_tf.retrieval: nearest-neighbour search over embedding galleries.

  build_index(embeddings, ids, kind="auto"|"exact"|"ivf", nlist=None, nprobe=None, seed=0) -> SearchIndex
      a tf.Module (arrays in tf.Variables) whose `search(queries, k, nprobe=None)` returns
      (squared Euclidean distances [B, k] ascending, ids [B, k] string) with stock TF ops, so the same
      object answers Python lookups and the export's `lookup` signature (TF1 session loader / TF Serving).
  ExactIndex, IVFIndex      the two kinds (index.py, ivf.py)
  squared_distances         float64 numpy reference distances (metrics, tests)
"""

from finegrain_tf.retrieval.build import AUTO_EXACT_MAX_SIZE, KINDS, build_index
from finegrain_tf.metrics.retrieval import squared_distances
from finegrain_tf.retrieval.index import PAD_ID, ExactIndex, SearchIndex
from finegrain_tf.retrieval.ivf import IVFIndex

__all__ = ["AUTO_EXACT_MAX_SIZE", "KINDS", "build_index", "squared_distances", "PAD_ID", "ExactIndex",
           "SearchIndex", "IVFIndex"]
