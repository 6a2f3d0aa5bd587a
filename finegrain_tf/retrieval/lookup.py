"""The Python retrieval API: an index over a gallery that answers lookups of images or embeddings.

    retriever = Retriever.from_images(embedding_model, gallery_images, ids, labels=gallery_labels)
    # or Retriever.from_embeddings(gallery_embeddings, ids, labels=...)
    result = retriever.lookup(query_images_or_embeddings, k=5)   # .ids, .distances, .positions, .labels
    retriever.evaluate(query_images, query_labels, ks=(1, 5))     # recall@k, precision@k, R-precision, MAP@R

Searches run through the same `SearchIndex.search` code that the export's `lookup` signature serves,
so Python and served answers agree. Like the export, embeddings are L2-normalised before indexing and
before querying (`normalize=True`), so distances are 2 - 2 cos.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from finegrain_tf.metrics.retrieval import check_embeddings, ranking_scores
from finegrain_tf.retrieval.build import build_index
from finegrain_tf.retrieval.index import SearchIndex
from finegrain_tf.utils import checks
from finegrain_tf.utils.labels import to_int_labels


@dataclasses.dataclass
class LookupResult:
    """Neighbours of each query, nearest first ([B, k] each; padding: id "", position -1, distance inf)."""

    ids: np.ndarray  # str
    distances: np.ndarray  # float32 squared Euclidean
    positions: np.ndarray  # int32 gallery positions
    labels: np.ndarray | None = None  # int64 gallery labels (-1 for padding), when the gallery has labels


def embed(model, images, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
    """Embeddings [N, D] float32 of images through a Keras model (last output if it has several)."""
    out = model.predict(images, batch_size=batch_size, verbose=0)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    out = np.asarray(out, np.float32).reshape(len(out), -1)
    return _normalize(out) if normalize else out


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class Retriever:
    """A gallery index plus what turns queries into embeddings.

    Args:
      index: a `SearchIndex` (see `build_index`), usually made by `from_embeddings` / `from_images`.
      embedding_model: Keras model images -> embeddings (needed to look up images).
      labels: optional [N] int gallery labels (for `evaluate` and `LookupResult.labels`).
      normalize: L2-normalise query embeddings (the gallery was normalised by `from_*`).
      batch_size: queries per search call.
    """

    def __init__(self, index: SearchIndex, embedding_model=None, labels=None, normalize: bool = True,
                 batch_size: int = 256):
        if not isinstance(index, SearchIndex):
            raise ValueError(f"index must be a finegrain_tf.retrieval.SearchIndex, got {type(index).__name__}")
        self.index = index
        self.embedding_model = embedding_model
        self.normalize = bool(normalize)
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        self.labels = None
        if labels is not None:
            self.labels = to_int_labels(labels, name="gallery labels")
            if len(self.labels) != index.size:
                raise ValueError(f"{len(self.labels)} gallery labels for a gallery of {index.size} items")
        self._search = tf.function(index.search_positions, reduce_retracing=True)

    @classmethod
    def from_embeddings(cls, embeddings, ids=None, labels=None, kind: str = "auto", nlist=None, nprobe=None,
                        seed: int = 0, embedding_model=None, normalize: bool = True) -> "Retriever":
        """Index gallery embeddings [N, D] (ids default to "0".."N-1")."""
        x = check_embeddings(embeddings, "gallery embeddings", dtype=np.float32)
        if normalize:
            x = _normalize(x)
        ids = [str(i) for i in range(len(x))] if ids is None else ids
        index = build_index(x, ids, kind=kind, nlist=nlist, nprobe=nprobe, seed=seed)
        return cls(index, embedding_model, labels, normalize)

    @classmethod
    def from_images(cls, embedding_model, images, ids=None, labels=None, batch_size: int = 64,
                    **kwargs) -> "Retriever":
        """Embed gallery images [N, H, W, 3] with `embedding_model`, then index them."""
        embeddings = embed(embedding_model, images, batch_size, normalize=False)
        return cls.from_embeddings(embeddings, ids, labels, embedding_model=embedding_model, **kwargs)

    def query_embeddings(self, queries) -> np.ndarray:
        """Embeddings [B, D] of queries given as embeddings [B, D] or images [B, H, W, C]."""
        arr = queries.numpy() if hasattr(queries, "numpy") else np.asarray(queries)
        if arr.ndim == 2:
            x = check_embeddings(arr, "query embeddings", self.index.dim, dtype=np.float32)
        elif arr.ndim == 4:
            if self.embedding_model is None:
                raise ValueError("looking up images needs an embedding_model; pass embeddings [B, D] instead")
            x = check_embeddings(embed(self.embedding_model, arr, normalize=False), "query embeddings",
                                 self.index.dim, dtype=np.float32)
        else:
            raise ValueError(f"queries must be embeddings [B, D] or images [B, H, W, C], got shape {arr.shape}")
        return _normalize(x) if self.normalize else x

    def lookup(self, queries, k: int = 5, nprobe=None) -> LookupResult:
        """The k nearest gallery items of each query (embeddings or images)."""
        x = self.query_embeddings(queries)
        k = checks.positive_int(k, "k")
        if k > self.index.size:
            raise ValueError(f"k={k} is larger than the gallery ({self.index.size} items)")
        if nprobe is not None and self.index.kind != "exact":
            self.index.search_positions(x[:1], 1, nprobe)  # validates nprobe with a ValueError
            nprobe = tf.constant(nprobe, tf.int32)  # a tensor: one trace for every nprobe
        dists, positions = [], []
        for start in range(0, len(x), self.batch_size):
            d, p = self._search(tf.constant(x[start:start + self.batch_size]), k, nprobe)
            dists.append(d.numpy())
            positions.append(p.numpy())
        positions = np.concatenate(positions)
        ids_all = np.array(self.index.ids.numpy().astype(str).tolist() + [""], dtype=object)
        result = LookupResult(ids=ids_all[positions].astype(str), distances=np.concatenate(dists),
                              positions=positions)
        if self.labels is not None:
            result.labels = np.where(positions >= 0, self.labels[np.maximum(positions, 0)], -1)
        return result

    def evaluate(self, queries, query_labels, ks: Sequence[int] = (1, 5, 10), nprobe=None,
                 average: str = "query") -> dict:
        """Recall@k, precision@k and (when every query's R fits the gallery) R-precision and MAP@R of
        queries (not gallery items) against the gallery, ranked by this index's search."""
        if self.labels is None:
            raise ValueError("evaluate needs gallery labels: build the Retriever with labels=")
        y = to_int_labels(query_labels, name="query labels")
        ks = sorted({checks.positive_int(k, "k") for k in ks})
        counts = np.bincount(self.labels, minlength=int(y.max(initial=0)) + 1)
        num_relevant = counts[np.minimum(y, len(counts) - 1)] * (y < len(counts))
        width = min(self.index.size, max(ks[-1], int(num_relevant.max(initial=0))))
        result = self.lookup(queries, width, nprobe)
        if len(y) != len(result.labels):
            raise ValueError(f"{len(result.labels)} queries but {len(y)} query labels")
        return ranking_scores(result.labels, y, num_relevant, [min(k, width) for k in ks], average)
