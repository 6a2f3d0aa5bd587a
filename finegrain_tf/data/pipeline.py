"""The input pipeline the training binary calls: `build_datasets(data_cfg, ...)`.

Flow: source (synthetic / image folder / tfds) -> per-split label index in numpy -> class filter
(keep the listed classes, remap labels to 0..k-1 in file order) -> long-tailed subsampling
(`data.imbalance_factor`, seed 000 sec. 5.4.1) -> class cap (`data.balanced_cap`, the balanced second
stage of sec. 4.2.2) -> tf.data: shard (distributed) -> shuffle -> repeat -> decode + preprocess_train
-> batch (drop remainder) -> prefetch. The eval split gets the class filter and preprocess_eval only.

Class counts are computed once over the whole (filtered, subsampled) train split, never per batch.
The index of a configuration is cached in-process, so the per-replica calls of
`distribute_datasets_from_function` do not re-read labels or re-verify image folders.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.data import loaders, preprocessing, synthetic


@dataclasses.dataclass
class DatasetInfo:
    """What the training binary needs to know about the data."""
    name: str
    num_classes: int
    class_names: list
    train_class_counts: np.ndarray  # int64 [C], over the whole train split after filter/subsampling
    eval_class_counts: np.ndarray  # int64 [C]
    num_train: int
    num_eval: int
    skipped_files: list = dataclasses.field(default_factory=list)  # corrupt images (folder data)
    superclass_of: Optional[np.ndarray] = None  # int64 [C] super-class of each class (synthetic data)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)


@dataclasses.dataclass
class _Split:
    """One split after indexing: `positions` into the source split and the new labels there."""
    positions: np.ndarray  # int64 [n]: index of each kept example in the source split's order
    labels: np.ndarray  # int64 [n]: remapped labels
    source_size: int  # examples in the source split (before any filtering)


@dataclasses.dataclass
class _Index:
    name: str
    class_names: list
    train: _Split
    eval: _Split
    # Source payloads: arrays (synthetic), file lists (folder) or nothing (tfds, read lazily).
    train_payload: object = None
    eval_payload: object = None
    skipped_files: list = dataclasses.field(default_factory=list)
    superclass_of: Optional[np.ndarray] = None


# --------------------------------------------------------------------------------------------------
# Class filter


def read_class_filter(path: str, class_names: list) -> np.ndarray:
    """Class ids to keep, in file order, from a text file (one class id -- or class name -- per line).

    Blank lines and lines starting with '#' are ignored.
    """
    if not os.path.isfile(path):
        raise ValueError(f"data.class_filter file {path!r} does not exist")
    by_name = {name: i for i, name in enumerate(class_names)}
    keep = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            token = token.split()[0].rstrip(",")
            try:
                cls = int(token)
            except ValueError:
                if token not in by_name:
                    raise ValueError(f"{path}:{lineno}: {token!r} is neither a class id nor a class name") from None
                cls = by_name[token]
            if not 0 <= cls < len(class_names):
                raise ValueError(f"{path}:{lineno}: class id {cls} is outside [0, {len(class_names)})")
            if cls in keep:
                raise ValueError(f"{path}:{lineno}: class id {cls} is listed twice")
            keep.append(cls)
    if not keep:
        raise ValueError(f"data.class_filter file {path!r} lists no class")
    return np.asarray(keep, np.int64)


def _label_map(num_classes: int, keep: Optional[np.ndarray]) -> np.ndarray:
    """old label -> new label (or -1 when dropped)."""
    if keep is None:
        return np.arange(num_classes, dtype=np.int64)
    mapping = np.full(num_classes, -1, np.int64)
    mapping[keep] = np.arange(len(keep), dtype=np.int64)
    return mapping


def _apply_map(labels: np.ndarray, mapping: np.ndarray) -> _Split:
    labels = np.asarray(labels, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(mapping)):
        raise ValueError(f"label {int(labels.max())} outside the {len(mapping)} known classes")
    new = mapping[labels] if labels.size else labels
    positions = np.flatnonzero(new >= 0).astype(np.int64)
    return _Split(positions=positions, labels=new[positions], source_size=len(labels))


def _subsample_train(split: _Split, num_classes: int, imbalance_factor: float, balanced_cap: int,
                     seed: int) -> _Split:
    from finegrain_tf.data import long_tail

    positions, labels = split.positions, split.labels
    if imbalance_factor > 1:
        kept = long_tail.make_long_tailed(labels, imbalance_factor, seed=seed, num_classes=num_classes)
        positions, labels = positions[kept], labels[kept]
    if balanced_cap > 0:
        kept = balanced_subset_indices(labels, balanced_cap, seed)
        positions, labels = positions[kept], labels[kept]
    return _Split(positions=positions, labels=labels, source_size=split.source_size)


def balanced_subset_indices(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    from finegrain_tf.data import long_tail

    return long_tail.balanced_subset(labels, cap, seed=seed)


# --------------------------------------------------------------------------------------------------
# Indexing the sources (cached: the per-replica dataset functions reuse it)


def _folder_roots(root: str, train_split: str, eval_split: str) -> tuple[str, str]:
    if not root:
        raise ValueError("data.name='folder' needs data.data_dir (the image-folder root)")
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    train_root, eval_root = os.path.join(root, train_split), os.path.join(root, eval_split)
    if os.path.isdir(train_root):
        if not os.path.isdir(eval_root):
            raise ValueError(f"image folder {root!r} has a {train_split!r} subfolder but no {eval_split!r} "
                             f"subfolder ({eval_root!r}) for data.eval_split")
        return train_root, eval_root
    logging.warning("image folder %s has no %r/%r subfolders: training and evaluating on the same images",
                    root, train_split, eval_split)
    return root, root


def _index_synthetic(data_cfg, keep_fn) -> _Index:
    data = synthetic.generate_from_config(data_cfg.synthetic)
    for split in (data_cfg.train_split, data_cfg.eval_split):
        if split not in data.images:
            raise ValueError(f"unknown synthetic split {split!r}; expected one of {list(synthetic.SPLITS)}")
    mapping, names = keep_fn(data.class_names)
    kept_classes = np.argsort(np.where(mapping >= 0, mapping, len(mapping)))[:len(names)]
    return _Index(name="synthetic", class_names=names, superclass_of=data.superclass_of[kept_classes],
                  train=_apply_map(data.labels[data_cfg.train_split], mapping),
                  eval=_apply_map(data.labels[data_cfg.eval_split], mapping),
                  train_payload=data.images[data_cfg.train_split],
                  eval_payload=data.images[data_cfg.eval_split])


def _index_folder(data_cfg, keep_fn) -> _Index:
    train_root, eval_root = _folder_roots(data_cfg.data_dir, data_cfg.train_split, data_cfg.eval_split)
    train_info = loaders.scan_image_folder(train_root)
    skipped = list(train_info.skipped_files)
    if eval_root == train_root:
        eval_info = train_info
    else:
        eval_info = loaders.scan_image_folder(eval_root)
        skipped += eval_info.skipped_files
        unknown = sorted(set(eval_info.class_names) - set(train_info.class_names))
        if unknown:
            raise ValueError(f"eval folder {eval_root!r} has classes not in {train_root!r}: {unknown[:5]}")
    # Eval labels follow the train folder's class ids (matched by name).
    to_train = np.asarray([train_info.class_names.index(n) for n in eval_info.class_names], np.int64)
    mapping, names = keep_fn(train_info.class_names)
    return _Index(name="folder", class_names=names,
                  train=_apply_map(train_info.labels, mapping),
                  eval=_apply_map(to_train[eval_info.labels], mapping),
                  train_payload=np.asarray(train_info.files), eval_payload=np.asarray(eval_info.files),
                  skipped_files=skipped)


def _index_tfds(data_cfg, keep_fn) -> _Index:
    name = data_cfg.name
    builder = loaders.tfds_builder(name, data_cfg.data_dir or None)
    class_names = loaders.tfds_class_names(builder)
    mapping, names = keep_fn(class_names)
    train_labels = loaders.read_tfds_labels(name, data_cfg.train_split, builder=builder)
    eval_labels = loaders.read_tfds_labels(name, data_cfg.eval_split, builder=builder)
    return _Index(name=name, class_names=names, train=_apply_map(train_labels, mapping),
                  eval=_apply_map(eval_labels, mapping))


def _class_filter_mtime(path: str) -> float:
    return os.path.getmtime(path) if path and os.path.isfile(path) else 0.0


@functools.lru_cache(maxsize=8)
def _cached_index(key: tuple) -> _Index:
    data_cfg = key[-1]
    class_filter = data_cfg.class_filter

    def keep_fn(class_names):
        keep = read_class_filter(class_filter, class_names) if class_filter else None
        names = list(class_names) if keep is None else [class_names[i] for i in keep]
        return _label_map(len(class_names), keep), names

    if data_cfg.name == "synthetic":
        index = _index_synthetic(data_cfg, keep_fn)
    elif data_cfg.name == "folder":
        index = _index_folder(data_cfg, keep_fn)
    else:
        index = _index_tfds(data_cfg, keep_fn)
    num_classes = len(index.class_names)
    if not index.train.labels.size:
        raise ValueError(f"data.train_split={data_cfg.train_split!r} of {data_cfg.name!r} has no example "
                         f"of the kept classes")
    index.train = _subsample_train(index.train, num_classes, data_cfg.imbalance_factor,
                                   data_cfg.balanced_cap, data_cfg.seed)
    return index


class _FrozenDataConfig:
    """A hashable snapshot of the DataConfig fields that define the index."""

    def __init__(self, data_cfg):
        self.name = data_cfg.name
        self.data_dir = data_cfg.data_dir
        self.train_split = data_cfg.train_split
        self.eval_split = data_cfg.eval_split
        self.class_filter = data_cfg.class_filter
        self.imbalance_factor = float(data_cfg.imbalance_factor)
        self.balanced_cap = int(data_cfg.balanced_cap)
        self.seed = int(data_cfg.seed)
        self.synthetic = dataclasses.replace(data_cfg.synthetic)
        self._key = (self.name, self.data_dir, self.train_split, self.eval_split, self.class_filter,
                     _class_filter_mtime(self.class_filter), self.imbalance_factor, self.balanced_cap,
                     self.seed, tuple(dataclasses.astuple(self.synthetic)))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _FrozenDataConfig) and self._key == other._key


def _validate(data_cfg) -> None:
    name = data_cfg.name
    if name not in ("synthetic", "folder") and name not in loaders.SUPPORTED_TFDS:
        raise ValueError(f"unknown data.name {name!r}; expected 'synthetic', 'folder' or one of "
                         f"{list(loaders.SUPPORTED_TFDS)}")
    if data_cfg.imbalance_factor < 1:
        raise ValueError(f"data.imbalance_factor must be >= 1, got {data_cfg.imbalance_factor!r}")
    if data_cfg.balanced_cap < 0:
        raise ValueError(f"data.balanced_cap must be >= 0, got {data_cfg.balanced_cap!r}")
    if data_cfg.shuffle_buffer < 1:
        raise ValueError(f"data.shuffle_buffer must be >= 1, got {data_cfg.shuffle_buffer!r}")


def clear_cache() -> None:
    """Forgets the cached indices (e.g. after files in an image folder changed)."""
    _cached_index.cache_clear()


def build_index(data_cfg) -> _Index:
    """The (cached) label index of a data config: class names, kept positions and labels per split."""
    _validate(data_cfg)
    frozen = _FrozenDataConfig(data_cfg)
    return _cached_index((hash(frozen), frozen))


# --------------------------------------------------------------------------------------------------
# tf.data


def _source_dataset(index: _Index, data_cfg, which: str) -> tuple[tf.data.Dataset, bool]:
    """(dataset of (payload, int64 label), whether payloads are encoded bytes / paths to decode).

    For in-memory sources the dataset is over positions 0..n-1 into the kept examples so that a full
    shuffle is cheap; the payload is gathered after shuffling (see `_load_fn`).
    """
    split = index.train if which == "train" else index.eval
    if index.name in ("synthetic", "folder"):
        ds = tf.data.Dataset.from_tensor_slices(np.arange(len(split.labels), dtype=np.int64))
        return ds, False
    # tfds: keep the listed positions of the file-ordered split, with their new labels.
    ds, _ = loaders.load_tfds_encoded(index.name, data_cfg.train_split if which == "train"
                                      else data_cfg.eval_split, data_cfg.data_dir or None)
    new_label = np.full(split.source_size, -1, np.int64)  # position -> new label (-1: dropped)
    new_label[split.positions] = split.labels
    table = tf.constant(new_label)
    ds = ds.enumerate().map(lambda i, e: (e[0], tf.gather(table, i)))
    ds = ds.filter(lambda encoded, label: label >= 0)
    return ds, True


def _load_fn(index: _Index, which: str):
    """Maps a source element to (uint8 image [H, W, 3], int64 label)."""
    split = index.train if which == "train" else index.eval
    payload = index.train_payload if which == "train" else index.eval_payload
    if index.name == "synthetic":
        images = tf.constant(payload[split.positions])
        labels = tf.constant(split.labels)
        return lambda i: (tf.gather(images, i), tf.gather(labels, i))
    if index.name == "folder":
        files = tf.constant(payload[split.positions])
        labels = tf.constant(split.labels)
        return lambda i: (preprocessing.decode_image(tf.io.read_file(tf.gather(files, i))), tf.gather(labels, i))
    return lambda encoded, label: (preprocessing.decode_image(encoded), label)


def build_datasets(data_cfg, global_batch_size: Optional[int] = None,
                   input_context: Optional[tf.distribute.InputContext] = None):
    """Train and eval datasets of `data_cfg` (a `finegrain_tf.train.config.DataConfig`).

    Args:
      data_cfg: data.name is "synthetic", "folder" (data_dir = root; `<root>/<train_split>` and
        `<root>/<eval_split>` when present, else the root for both) or one of `loaders.SUPPORTED_TFDS`.
      global_batch_size: default `data_cfg.batch_size`.
      input_context: from `strategy.distribute_datasets_from_function`: shard by input pipeline and
        batch per replica.

    Returns:
      (train_ds, eval_ds, info): train_ds yields (float32 [B, S, S, 3] in [0, 255], int64 [B]),
      shuffled (seeded), repeated, batch remainder dropped; eval_ds is centre-cropped, not repeated,
      last batch kept; info is a `DatasetInfo`.
    """
    index = build_index(data_cfg)
    batch = int(global_batch_size or data_cfg.batch_size)
    if batch <= 0:
        raise ValueError(f"global_batch_size must be > 0, got {batch!r}")
    shard_id, num_shards = 0, 1
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch)
        shard_id, num_shards = input_context.input_pipeline_id, input_context.num_input_pipelines
    image_size, resize_size = int(data_cfg.image_size), int(data_cfg.resize_size)
    seed = int(data_cfg.seed)

    # Train: shard -> shuffle -> repeat -> decode + augment (stateless, per-element seeds) -> batch.
    train_src, encoded = _source_dataset(index, data_cfg, "train")
    if num_shards > 1:
        train_src = train_src.shard(num_shards, shard_id)
    buffer = len(index.train.labels) if not encoded else min(data_cfg.shuffle_buffer, len(index.train.labels))
    train_src = train_src.shuffle(max(buffer, 1), seed=seed * 1009 + shard_id, reshuffle_each_iteration=True)
    load = _load_fn(index, "train")
    aug_seed = seed * 1009 + shard_id

    def train_map(i, element):
        image, label = load(*element) if isinstance(element, tuple) else load(element)
        return preprocessing.preprocess_train(image, image_size, resize_size,
                                              seed=tf.stack([tf.constant(aug_seed, tf.int64), i])), label

    train_ds = train_src.repeat().enumerate().map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    if index.name != "synthetic":  # verified files can still fail (changed on disk): skip, never crash
        train_ds = train_ds.ignore_errors(log_warning=True)
    train_ds = train_ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    # Eval: shard -> decode + centre crop -> batch (keep the remainder).
    eval_src, _ = _source_dataset(index, data_cfg, "eval")
    if num_shards > 1:
        eval_src = eval_src.shard(num_shards, shard_id)
    eval_load = _load_fn(index, "eval")

    def eval_map(*element):
        image, label = eval_load(*element)
        return preprocessing.preprocess_eval(image, image_size, resize_size), label

    eval_ds = eval_src.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
    if index.name != "synthetic":
        eval_ds = eval_ds.ignore_errors(log_warning=True)
    eval_ds = eval_ds.batch(batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
    num_classes = len(index.class_names)
    info = DatasetInfo(
        name=index.name, num_classes=num_classes, class_names=list(index.class_names),
        train_class_counts=np.bincount(index.train.labels, minlength=num_classes).astype(np.int64),
        eval_class_counts=np.bincount(index.eval.labels, minlength=num_classes).astype(np.int64),
        num_train=int(len(index.train.labels)), num_eval=int(len(index.eval.labels)),
        skipped_files=list(index.skipped_files),
        superclass_of=None if index.superclass_of is None else np.array(index.superclass_of))
    return train_ds, eval_ds, info
