"""`build_index`: validate a gallery and build the index kind that fits its size."""

from __future__ import annotations

import numpy as np
from absl import logging

from finegrain_tf.metrics.retrieval import check_embeddings
from finegrain_tf.retrieval.index import PAD_ID, ExactIndex, SearchIndex
from finegrain_tf.retrieval.ivf import IVFIndex, assign_to_lists, default_nlist, default_nprobe, train_centroids
from finegrain_tf.utils import checks

KINDS = ("auto", "exact", "ivf")
# kind="auto" searches exactly up to this many items (a few ms per query at D = 128 on 2 cores), IVF above.
AUTO_EXACT_MAX_SIZE = 100_000


def as_ids(ids, size: int) -> list[str]:
    """Gallery ids as a list of unique, non-empty strings (bytes are decoded as UTF-8)."""
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"ids must be a sequence of strings, got a single {type(ids).__name__} {ids!r}")
    out = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in np.asarray(ids).reshape(-1).tolist()]
    if len(out) != size:
        raise ValueError(f"{size} embeddings but {len(out)} ids")
    if PAD_ID in out:
        raise ValueError(f"ids must be non-empty strings (the empty id marks padding), found one at "
                         f"position {out.index(PAD_ID)}")
    if len(set(out)) != len(out):
        seen, dups = set(), []
        for i in out:
            if i in seen:
                dups.append(i)
            seen.add(i)
        raise ValueError(f"ids must be unique, found {len(dups)} duplicate(s), e.g. {dups[:3]!r}")
    return out


def build_index(embeddings, ids, kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                seed: int = 0) -> SearchIndex:
    """Index over a gallery for `search(queries, k, nprobe=None) -> (squared distances, ids)`.

    Args:
      embeddings: [N, D] finite floats (stored as float32; the export passes unit vectors).
      ids: [N] unique non-empty strings (bytes decoded as UTF-8, other values converted with str).
      kind: "exact" (brute force), "ivf" (inverted file, k-means lists) or "auto" (exact up to
        AUTO_EXACT_MAX_SIZE items, IVF above).
      nlist: IVF lists (default about 2 * sqrt(N)); must be <= N.
      nprobe: IVF lists scanned per query by default (default max(8, nlist / 32)); must be <= nlist.
      seed: k-means seed (the IVF index is deterministic given it).

    Raises:
      ValueError: bad shapes, non-finite values, bad or duplicate ids, an unknown kind, nlist / nprobe
        out of range or given for kind="exact".
    """
    kind = checks.one_of(kind, "kind", KINDS)
    embeddings = check_embeddings(embeddings, "gallery embeddings", dtype=np.float32)
    ids = as_ids(ids, len(embeddings))
    size = len(embeddings)
    if nlist is not None:
        nlist = checks.positive_int(nlist, "nlist")
    if nprobe is not None:
        nprobe = checks.positive_int(nprobe, "nprobe")
    if kind == "exact" and (nlist or nprobe):
        raise ValueError(f"nlist={nlist!r} / nprobe={nprobe!r} apply to kind='ivf' only, not 'exact'")
    if kind == "auto":
        kind = "exact" if size <= AUTO_EXACT_MAX_SIZE else "ivf"
        if kind == "exact" and (nlist or nprobe):
            logging.info("gallery of %d items <= %d: exact search, nlist/nprobe unused", size,
                         AUTO_EXACT_MAX_SIZE)
    if kind == "exact":
        return ExactIndex(embeddings, ids)
    nlist = nlist or default_nlist(size)
    if nlist > size:
        raise ValueError(f"nlist={nlist} is larger than the gallery ({size} items)")
    nprobe = nprobe or default_nprobe(nlist)
    if nprobe > nlist:
        raise ValueError(f"nprobe={nprobe} is larger than nlist={nlist}")
    seed = checks.non_negative_int(seed, "seed")
    centroids = train_centroids(embeddings, nlist, seed)
    return IVFIndex(embeddings, ids, centroids, nprobe, assign_to_lists(embeddings, centroids), seed)
