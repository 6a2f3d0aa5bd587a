"""Naive references for the retrieval tests: explicit float64 loops, no vectorised shortcuts."""

import numpy as np


def brute_force_knn(queries, gallery, k):
    """(squared distances [B, k], positions [B, k]) by looping over every pair; ties -> smaller index."""
    queries = np.asarray(queries, np.float64)
    gallery = np.asarray(gallery, np.float64)
    dists, positions = [], []
    for q in queries:
        row = []
        for j, g in enumerate(gallery):
            row.append((float(np.sum((q - g) ** 2)), j))
        row.sort()  # by distance, then by position
        dists.append([d for d, _ in row[:k]])
        positions.append([j for _, j in row[:k]])
    return np.array(dists), np.array(positions)


def clustered(n, dim, n_clusters, spread, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    labels = rng.integers(0, n_clusters, size=n)
    return (centers[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels
