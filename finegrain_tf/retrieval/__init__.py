"""finegrain_tf.retrieval: nearest-neighbour search over embedding galleries.

  build_index(embeddings, ids, kind="auto"|"exact"|"ivf", nlist=None, nprobe=None, seed=0) -> SearchIndex
      a tf.Module (arrays in tf.Variables) whose `search(queries, k, nprobe=None)` returns
      (squared Euclidean distances [B, k] ascending, ids [B, k] string) with stock TF ops, so the same
      object answers Python lookups and the export's `lookup` signature (TF1 session loader / TF Serving).
  ExactIndex, IVFIndex      the two kinds (index.py, ivf.py)
  Retriever                 the Python API: index + embedding model; lookup(images or embeddings, k),
                            evaluate(queries, labels) with the same search code as the export (lookup.py)
  RetrievalEvaluation       Keras callback: Recall@k, precision@k, R-precision, MAP@R, NMI / AMI of a
                            validation set every N epochs / steps (callback.py)
  save_index, lookup_function   an index alone as a SavedModel with a `lookup` signature over embeddings
  squared_distances         float64 numpy reference distances (from finegrain_tf.metrics.retrieval)

The retrieval metrics themselves are plain functions in `finegrain_tf.metrics` (r_precision, map_at_r,
recall_at_k, precision_at_k, cluster_scores, retrieval_report).
"""

from finegrain_tf.metrics.retrieval import squared_distances
from finegrain_tf.retrieval.build import AUTO_EXACT_MAX_SIZE, KINDS, build_index
from finegrain_tf.retrieval.index import PAD_ID, ExactIndex, SearchIndex
from finegrain_tf.retrieval.callback import RetrievalEvaluation
from finegrain_tf.retrieval.ivf import IVFIndex
from finegrain_tf.retrieval.lookup import LookupResult, Retriever, embed
from finegrain_tf.retrieval.saved_model import lookup_function, save_index

__all__ = ["AUTO_EXACT_MAX_SIZE", "KINDS", "build_index", "squared_distances", "PAD_ID", "ExactIndex",
           "SearchIndex", "IVFIndex", "LookupResult", "Retriever", "RetrievalEvaluation", "embed",
           "lookup_function", "save_index"]
