"""Dataset manifests of the bootstrapping rounds: CSV `path,label` rows, no image copies.

S_0 is given as a manifest; each round writes S_i = S_{i-1} ∪ T_i as a new manifest (labels are class
names) that `finegrain-train` reads with `data.name=manifest`, and H_i as a hard-negatives file
(`finegrain_tf.sampling.hard_negatives`). Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

from finegrain_tf.sampling.hard_negatives import read_rows

_PATH_KEYS = ("path", "image_path", "image", "file")
_LABEL_KEYS = ("label", "class", "class_name")


def read_manifest(path: str) -> tuple[list, list]:
    """(paths, labels) of a CSV/JSONL manifest with a path and a label column; relative paths are
    taken from the manifest's folder."""
    base = os.path.dirname(os.path.abspath(path))
    paths, labels = [], []
    for line, row in read_rows(path):
        image = next((str(row[k]) for k in _PATH_KEYS if row.get(k) not in (None, "")), None)
        label = next((str(row[k]) for k in _LABEL_KEYS if row.get(k) not in (None, "")), None)
        if image is None or label is None:
            raise ValueError(f"{path}: row {line} needs a path ({list(_PATH_KEYS)}) and a label "
                             f"({list(_LABEL_KEYS)}): {row!r}")
        paths.append(image if os.path.isabs(image) else os.path.join(base, image))
        labels.append(label)
    if not paths:
        raise ValueError(f"manifest {path!r} has no rows")
    return paths, labels


def write_manifest(path: str, paths: Sequence[str], labels: Sequence[str]) -> str:
    """Writes `path,label` rows (absolute paths) atomically."""
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows((os.path.abspath(p), label) for p, label in zip(paths, labels))
    os.replace(tmp, path)
    return path
