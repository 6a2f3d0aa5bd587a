"""The candidate pool of the bootstrapping rounds (seed 000 §2.2.1): unlabeled images to propose.

A pool comes from a folder (every image file below it, recursively, in sorted order) or a manifest,
CSV with a header or JSONL, one image per row:

    path                      a local image path (relative paths are taken from the manifest's folder)
    id                        optional stable id (default: the path); with `image_root`, a row may
                              carry only an id and the image is <image_root>/<id>
    label                     optional ground truth (used only by the simulated labeler)

Items keep the file order; `subsets(k)` deals them into the disjoint C_1..C_k of §2.2.2 by a seeded
permutation, so a rerun gets the same subsets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

import numpy as np

from finegrain_tf.data.loaders import IMAGE_EXTENSIONS
from finegrain_tf.data.manifest import read_rows

_PATH_KEYS = ("path", "image_path", "image", "file")
_ID_KEYS = ("id", "item_id", "image_id")
_LABEL_KEYS = ("label", "class", "class_name")


@dataclasses.dataclass
class CandidatePool:
    """Candidate images: ids, local paths and (optionally) ground-truth labels as given."""
    ids: list
    paths: list
    labels: Optional[list] = None  # strings as written in the manifest, or None

    def __post_init__(self):
        if len(self.ids) != len(self.paths):
            raise ValueError(f"{len(self.ids)} ids but {len(self.paths)} paths")
        if len(set(self.ids)) != len(self.ids):
            seen = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))
            raise ValueError(f"candidate id {dup!r} appears more than once in the pool")

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """SHA-256 over the ids in order: a scoring pass refuses to resume on another pool."""
        h = hashlib.sha256()
        for item in self.ids:
            h.update(item.encode("utf-8") + b"\0")
        return h.hexdigest()

    def take(self, positions) -> "CandidatePool":
        positions = np.asarray(positions, np.int64)
        return CandidatePool(ids=[self.ids[i] for i in positions],
                             paths=[self.paths[i] for i in positions],
                             labels=None if self.labels is None else [self.labels[i] for i in positions])

    def subsets(self, k: int, seed: int = 0) -> list:
        """The disjoint subsets C_1..C_k (sizes differ by at most one), each in pool order."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"number of subsets must be a positive int, got {k!r}")
        if k > len(self):
            raise ValueError(f"cannot split a pool of {len(self)} images into {k} subsets")
        perm = np.random.default_rng(seed).permutation(len(self))
        return [self.take(np.sort(part)) for part in np.array_split(perm, k)]


def _pick(row: dict, keys):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return str(row[k])
    return None


def pool_from_manifest(path: str, image_root: str = "") -> CandidatePool:
    """Reads a pool manifest (see the module docstring)."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"pool manifest {path!r} has no rows")
    base = os.path.dirname(os.path.abspath(path))
    ids, paths, labels = [], [], []
    for line, row in rows:
        image, item_id = _pick(row, _PATH_KEYS), _pick(row, _ID_KEYS)
        if image is None and item_id is not None and image_root:
            image = os.path.join(image_root, item_id)
        if image is None:
            raise ValueError(f"{path}: row {line} has no image path (columns {list(_PATH_KEYS)}, or an "
                             f"id with an image root): {row!r}")
        if not os.path.isabs(image):
            image = os.path.join(image_root or base, image)
        ids.append(item_id or image)
        paths.append(image)
        labels.append(_pick(row, _LABEL_KEYS))
    has_labels = any(label is not None for label in labels)
    if has_labels and any(label is None for label in labels):
        missing = next(line for (line, _), label in zip(rows, labels) if label is None)
        raise ValueError(f"{path}: row {missing} has no label while other rows have one")
    return CandidatePool(ids=ids, paths=paths, labels=labels if has_labels else None)


def pool_from_folder(root: str) -> CandidatePool:
    """Every image file below `root` (recursive, sorted); ids are paths relative to `root`."""
    if not root or not os.path.isdir(root):
        raise ValueError(f"pool folder {root!r} does not exist or is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames
                  if f.lower().endswith(tuple(IMAGE_EXTENSIONS)) and not f.startswith(".")]
    if not found:
        raise ValueError(f"pool folder {root!r} holds no image files ({list(IMAGE_EXTENSIONS)})")
    found.sort()
    return CandidatePool(ids=[os.path.relpath(p, root) for p in found], paths=found)


def load_pool(source: str, image_root: str = "") -> CandidatePool:
    """A pool from a folder or a .csv / .jsonl manifest."""
    if os.path.isdir(source):
        return pool_from_folder(source)
    if not source.endswith((".csv", ".jsonl", ".json")):
        raise ValueError(f"pool {source!r} is neither a folder nor a .csv/.jsonl manifest")
    return pool_from_manifest(source, image_root)
