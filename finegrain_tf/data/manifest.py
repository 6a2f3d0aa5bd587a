"""Dataset manifests: CSV or JSONL files listing (path, label[, split]) rows, no image copies.

The bootstrapping rounds (seed 000 sec. 2.2.2) write the grown dataset S_i as a manifest, and
`finegrain-train` reads it with `data.name=manifest data.data_dir=<file>` (`data.eval_manifest` for a
separate evaluation list). Columns (CSV header or JSON keys):

  path   image file; relative paths are taken from the manifest's folder (aliases: image_path, image, file)
  label  class name or integer class id (aliases: class, class_name)
  split  optional: which split a row belongs to (e.g. train / test), matched against data.train_split
         and data.eval_split

`read_rows` is the package's one CSV/JSONL row reader (hard negatives, geo photos and pools use it).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
from absl import logging

from finegrain_tf.data import decode, loaders

PATH_KEYS = ("path", "image_path", "image", "file")
LABEL_KEYS = ("label", "class", "class_name")
SPLIT_KEY = "split"
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


def read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, dict) rows of a CSV file with a header, or of a JSONL file (one object a line).

    Raises ValueError naming the file and line for a missing file, invalid JSON or a non-object line.
    """
    if not os.path.isfile(path):
        raise ValueError(f"file not found: {path!r}")
    rows = []
    if path.lower().endswith(JSON_SUFFIXES):
        with open(path) as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{line}: expected a JSON object, got {text.strip()[:60]!r}")
                rows.append((line, row))
    else:
        with open(path, newline="") as f:
            rows = [(line, row) for line, row in enumerate(csv.DictReader(f), 2)]
    return rows


def write_rows(path: str, header: Sequence[str], rows) -> str:
    """Writes a CSV file with a header row atomically (temp file, fsync, rename): a reader never sees
    half a file. Used for the manifests and hard-negative files the bootstrapping rounds write."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _pick(row: dict, keys) -> Optional[str]:
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return str(value).strip()
    return None


@dataclasses.dataclass
class Manifest:
    """The rows of a manifest file, paths made absolute."""
    source: str
    paths: list
    labels: list  # str: class names or integer ids as text
    splits: Optional[list]  # str per row, or None when the file has no split column

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, split: str) -> "Manifest":
        """The rows of one split (all rows when the manifest has no split column)."""
        if self.splits is None:
            return self
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return Manifest(self.source, [self.paths[i] for i in keep], [self.labels[i] for i in keep],
                        [split] * len(keep))

    def split_names(self) -> list:
        return sorted(set(self.splits)) if self.splits is not None else []


def read_manifest(path: str) -> Manifest:
    """Reads a manifest (see the module docstring).

    Raises:
      ValueError: missing file, no rows, a row without a path or a label (named by file:line), or a
        split column present on some rows only.
    """
    base = os.path.dirname(os.path.abspath(path))
    paths, labels, splits = [], [], []
    for line, row in read_rows(path):
        image, label = _pick(row, PATH_KEYS), _pick(row, LABEL_KEYS)
        if image is None or label is None:
            raise ValueError(f"{path}:{line}: a row needs a path (one of {list(PATH_KEYS)}) and a label "
                             f"(one of {list(LABEL_KEYS)}), got {row!r}")
        paths.append(image if os.path.isabs(image) else os.path.join(base, image))
        labels.append(label)
        splits.append(_pick(row, (SPLIT_KEY,)))
    if not paths:
        raise ValueError(f"manifest {path!r} has no rows")
    missing = [i for i, s in enumerate(splits) if s is None]
    if missing and len(missing) != len(splits):
        raise ValueError(f"manifest {path!r}: {len(missing)} of {len(splits)} rows have no split (first: "
                         f"{paths[missing[0]]!r}); give every row a split or none")
    return Manifest(source=path, paths=paths, labels=labels, splits=None if missing else splits)


def class_names_of(labels) -> list:
    """Sorted class names; integer labels keep their ids (names "0".."max", so label i is class i)."""
    unique = sorted(set(labels))
    if all(label.lstrip("-").isdigit() for label in unique):
        ids = sorted(int(label) for label in unique)
        if ids[0] < 0:
            raise ValueError(f"manifest class ids must be >= 0, got {ids[0]}")
        return [str(i) for i in range(ids[-1] + 1)]
    return unique


def encode_labels(labels: Sequence[str], class_names: Sequence[str], where: str) -> np.ndarray:
    """int64 class ids of manifest labels (names, or integer ids as text) given the class names."""
    index = {name: i for i, name in enumerate(class_names)}
    ids = []
    for label in labels:
        key = str(int(label)) if label.lstrip("-").isdigit() and label not in index else label
        if key not in index:
            raise ValueError(f"{where}: label {label!r} is not one of the {len(class_names)} classes "
                             f"({list(class_names)[:5]}...)")
        ids.append(index[key])
    return np.asarray(ids, np.int64)


def verify_rows(rows: Manifest, class_names: Sequence[str], limits: decode.DecodeLimits, where: str):
    """(files, labels, skipped, too_large) of manifest rows, with the folder loader's rules: an image
    listed twice for the same class counts once; missing, corrupt and oversized images are skipped,
    counted and named in a warning."""
    labels = encode_labels(rows.labels, class_names, where)
    seen, files, kept_labels, duplicates = set(), [], [], 0
    for path, label in zip(rows.paths, labels):
        key = (os.path.realpath(path), int(label))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        files.append(path)
        kept_labels.append(label)
    if duplicates:
        logging.warning("%s: %d rows repeat an image already listed for the same class; each image counts "
                        "once", where, duplicates)
    skipped, too_large = loaders.find_bad_images(files, limits)
    if skipped:
        bad = set(skipped)
        logging.warning("%s: skipped %d images (%d missing, corrupt or unreadable, %d over the decode "
                        "limits: %s); first: %s", where, len(skipped), len(skipped) - len(too_large),
                        len(too_large), limits.describe(), skipped[0])
        keep = [i for i, f in enumerate(files) if f not in bad]
        files, kept_labels = [files[i] for i in keep], [kept_labels[i] for i in keep]
    if not files:
        raise ValueError(f"{where}: none of the {len(rows)} listed images is usable")
    return np.asarray(files, dtype=str), np.asarray(kept_labels, np.int64), skipped, too_large


def load_manifest(path: str, split: str = "", limits: decode.DecodeLimits = decode.DEFAULT_LIMITS):
    """(dataset of (uint8 image [H, W, 3], int64 label) in file order, class names, number of files).

    `split` selects the rows of one split ("" = every row). Images are verified first (see
    `verify_rows`); the stream drops any that fail later.
    """
    rows = read_manifest(path)
    if split:
        if rows.splits is None:
            raise ValueError(f"manifest {path!r} has no split column to select {split!r} from")
        rows = rows.select(split)
        if not len(rows):
            raise ValueError(f"manifest {path!r} has no row with split {split!r}")
    class_names = class_names_of(rows.labels)
    files, labels, _, _ = verify_rows(rows, class_names, limits, f"manifest {path}")
    return loaders.folder_dataset(files, labels, limits), class_names, len(files)
