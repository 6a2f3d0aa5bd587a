"""Dataset manifests of the bootstrapping rounds: CSV `path,label` rows, no image copies.

S_0 is given as a manifest; each round writes S_i = S_{i-1} ∪ T_i as a new manifest (labels are class
names) that `finegrain-train` reads with `data.name=manifest`, and H_i as a hard-negatives file
(`finegrain_tf.sampling.hard_negatives`). Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import os
from typing import Sequence

from finegrain_tf.data import manifest


def read_manifest(path: str) -> tuple[list, list]:
    """(absolute paths, labels) of a path,label manifest (`finegrain_tf.data.manifest`, the reader
    finegrain-train uses)."""
    rows = manifest.read_manifest(path)
    return list(rows.paths), list(rows.labels)


def write_manifest(path: str, paths: Sequence[str], labels: Sequence[str]) -> str:
    """Writes `path,label` rows (absolute paths) atomically."""
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    return manifest.write_rows(path, ["path", "label"],
                               ((os.path.abspath(p), label) for p, label in zip(paths, labels)))
