"""Human hard-negative files (seed 000 §2.2.2, §2.4.3): images a labeller rejected for a class.

A hard-negatives file is CSV (header row) or JSONL, one row per rejected proposal:

    image_path,proposed_class
    /data/pool/123.jpg,rose

Columns/keys: one of image|path|image_path|id|image_id|file and one of
class|proposed_class|label|class_id|class_name. A class is an int id or, given the class names, a name.
An item is a local image path or an id; `synthetic:<split>:<index>` names an image of the embedded
synthetic dataset (so configs can ship a file for it). The bootstrap rounds write these files
(`write_hard_negatives`); the metric task and the HNS/HNM softmax baselines read them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from finegrain_tf.data.manifest import read_rows, write_rows

_ITEM_KEYS = ("image", "path", "image_path", "id", "image_id", "file")
_CLASS_KEYS = ("class", "proposed_class", "label", "class_id", "class_name")
SYNTHETIC_PREFIX = "synthetic:"


@dataclasses.dataclass
class HardNegatives:
    """Human-labelled hard negatives: `items[i]` (image id or path) was wrongly proposed for `classes[i]`."""
    items: list
    classes: np.ndarray  # int64 [H]

    def __len__(self) -> int:
        return len(self.items)


def _pick(row: dict, keys, path, line):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    raise ValueError(f"{path}: row {line} has none of the columns {list(keys)}: {row!r}")


def load_hard_negatives(path: str, class_names: Optional[Sequence[str]] = None) -> HardNegatives:
    """Reads a hard-negatives file (see the module docstring)."""
    if not os.path.exists(path):
        raise ValueError(f"hard-negative file not found: {path!r}")
    index = {name: i for i, name in enumerate(class_names)} if class_names is not None else None
    items, classes = [], []
    for line, row in read_rows(path):
        item = _pick(row, _ITEM_KEYS, path, line)
        cls = _pick(row, _CLASS_KEYS, path, line)
        if index is not None and str(cls) in index:
            cls = index[str(cls)]
        else:
            try:
                cls = int(cls)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {line}: unknown class {cls!r}") from None
        if cls < 0 or (class_names is not None and cls >= len(class_names)):
            raise ValueError(f"{path}: row {line}: class {cls!r} out of range")
        items.append(str(item))
        classes.append(cls)
    return HardNegatives(items=items, classes=np.asarray(classes, np.int64))


def write_hard_negatives(path: str, items: Sequence[str], class_names: Sequence[str]) -> str:
    """Writes rows (item, proposed class name) as CSV, atomically (temp file + rename)."""
    if len(items) != len(class_names):
        raise ValueError(f"{len(items)} items but {len(class_names)} classes")
    return write_rows(path, ["image_path", "proposed_class"], zip(items, class_names))


def synthetic_id(split: str, index: int) -> str:
    return f"{SYNTHETIC_PREFIX}{split}:{int(index)}"


def parse_synthetic_id(item: str) -> Optional[tuple]:
    """(split, index) of a `synthetic:<split>:<index>` id, None for other items."""
    if not item.startswith(SYNTHETIC_PREFIX):
        return None
    parts = item[len(SYNTHETIC_PREFIX):].split(":")
    if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"synthetic image id {item!r} is not of the form synthetic:<split>:<index>")
    return parts[0], int(parts[1])


def sibling_hard_negatives(labels: np.ndarray, superclass_of: np.ndarray, split: str = "val",
                           seed: int = 0) -> HardNegatives:
    """Simulated labeller rejections on the synthetic hierarchy: each image of `split` (true class s)
    proposed for a random sibling class c != s of the same super-class, the confusion a fine-grained
    classifier makes. Returns items `synthetic:<split>:<i>` (images without a sibling are skipped)."""
    rng = np.random.default_rng(seed)
    superclass_of = np.asarray(superclass_of)
    items, proposed = [], []
    for i, s in enumerate(np.asarray(labels).reshape(-1)):
        siblings = np.flatnonzero((superclass_of == superclass_of[s]) & (np.arange(len(superclass_of)) != s))
        if len(siblings):
            items.append(synthetic_id(split, i))
            proposed.append(int(rng.choice(siblings)))
    return HardNegatives(items=items, classes=np.asarray(proposed, np.int64))


def resolve_hard_negatives(data_cfg, class_names: Sequence[str]) -> tuple:
    """The hard negatives of a `DataConfig` (`data.hard_negatives`: a file, or "simulated" for the
    synthetic data's sibling rejections) and where each image is.

    Returns (HardNegatives, sources) where each source is a uint8 image [H, W, 3] (synthetic ids) or a
    local file path (str).
    """
    from finegrain_tf.data import synthetic

    spec = data_cfg.hard_negatives
    if not spec:
        raise ValueError("data.hard_negatives is empty: no hard-negative file given")
    data = None
    if spec == "simulated":
        if data_cfg.name != "synthetic" or data_cfg.class_filter:
            raise ValueError("data.hard_negatives='simulated' needs data.name='synthetic' without a "
                             "data.class_filter")
        data = synthetic.generate_from_config(data_cfg.synthetic)
        found = sibling_hard_negatives(data.labels["val"], data.superclass_of, split="val",
                                       seed=data_cfg.seed)
    else:
        found = load_hard_negatives(spec, class_names)
    if not len(found):
        raise ValueError(f"data.hard_negatives={spec!r} lists no hard negative")
    sources = []
    for item in found.items:
        parsed = parse_synthetic_id(item)
        if parsed is None:
            sources.append(item)
            continue
        if data_cfg.name != "synthetic":
            raise ValueError(f"hard negative {item!r} names a synthetic image but data.name="
                             f"{data_cfg.name!r}")
        data = data or synthetic.generate_from_config(data_cfg.synthetic)
        split, index = parsed
        if split not in data.images or index >= len(data.images[split]):
            raise ValueError(f"hard negative {item!r} is not an image of the synthetic data")
        sources.append(data.images[split][index])
    return found, sources
