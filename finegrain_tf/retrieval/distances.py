"""Distances and input checks shared by the index, the Python lookup and the retrieval metrics.

`squared_distances` is the float64 numpy reference (metrics, samplers); the TF index computes the same
quantity in float32 inside the graph (`finegrain_tf.retrieval.index`).
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("euclidean", "cosine")


def as_embeddings(values, name: str = "embeddings", dim: int | None = None, dtype=np.float32) -> np.ndarray:
    """`values` as a finite [N, D] array (N >= 1); ValueError naming what is wrong."""
    arr = np.asarray(values.numpy() if hasattr(values, "numpy") else values)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0 (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, expected {dim}")
    arr = arr.astype(dtype, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name} contain NaN or Inf in {bad.size} row(s), first rows {bad[:5].tolist()}")
    return arr


def prepare(embeddings: np.ndarray, distance: str = "euclidean") -> np.ndarray:
    """Vectors whose Euclidean distance ranks like `distance` ("cosine": unit rows)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if distance == "cosine":
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError(f"cosine distance is undefined for zero vectors (rows "
                             f"{np.flatnonzero(norms[:, 0] == 0)[:5].tolist()})")
        return embeddings / norms
    return embeddings


def squared_distances(a, b) -> np.ndarray:
    """||a_i - b_j||^2 for all pairs, [len(a), len(b)] float64 (clipped at 0 against rounding)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
