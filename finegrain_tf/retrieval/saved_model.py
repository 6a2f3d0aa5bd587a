"""An index on its own as a SavedModel (no image model): a `lookup` signature over query embeddings.

    save_index(index, path, k=10)
    # signature "lookup": queries float32 [None, D], nprobe int32 [] -> distances float32 [None, k],
    #                     ids string [None, k]

The export of a trained model (`finegrain_tf.serving`) serves the same `index.search` behind its image
`lookup` signature; this helper is for galleries of precomputed embeddings and for benchmarks.
"""

from __future__ import annotations

import tensorflow as tf

from finegrain_tf.retrieval.index import SearchIndex


def lookup_function(index: SearchIndex, k: int):
    """tf.function (queries [None, D] float32, nprobe [] int32) -> {"distances", "ids"} (k per query).

    The exact index ignores nprobe (the input exists so every kind has the same signature)."""

    @tf.function(input_signature=[tf.TensorSpec([None, index.dim], tf.float32, name="queries"),
                                  tf.TensorSpec([], tf.int32, name="nprobe")], autograph=False)
    def lookup(queries, nprobe):
        distances, ids = index.search(queries, k, nprobe if index.kind != "exact" else None)
        return {"distances": distances, "ids": ids}

    return lookup


def save_index(index: SearchIndex, path: str, k: int) -> str:
    """Writes `index` as a SavedModel at `path` with the `lookup` signature (loads in the TF1 session
    loader and TensorFlow Serving); returns `path`."""
    module = tf.Module()
    module.index = index
    tf.saved_model.save(module, path, signatures={"lookup": lookup_function(index, k)})
    return path
