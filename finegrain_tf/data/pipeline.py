"""The input pipeline the training binary calls: `build_datasets(data_cfg, ...)`.

Flow: source (synthetic / image folder / manifest / tfds) -> per-split label index in numpy -> class
filter (keep the listed classes, remap labels to 0..k-1 in file order) -> subsampling
(`data.imbalance_factor`, seed 000 sec. 5.4.1; `data.balanced_cap`, the balanced second stage of
sec. 4.2.2) -> tf.data: shard (distributed) -> shuffle -> repeat -> bounded decode (skip and count)
-> preprocess_train with `data.augment` -> batch (drop remainder) -> prefetch. The eval split gets the
class filter and the centre crop (or the 12 views of `data.eval_crops=12`) only.

Class counts are computed once over the whole (filtered, subsampled) train split, never per batch.
The index of a configuration is cached in-process, so the per-replica calls of
`distribute_datasets_from_function` do not re-read labels or re-verify image folders.

Counting is honest at every stage. Files found corrupt, unreadable or oversized while indexing are
listed in `DatasetInfo.skipped_files`. Files that fail later, while training reads them (changed or
removed on disk), and images over the decode limits of a tfds source are dropped from the stream and
counted by `DatasetInfo.skip_counter` (a `SkipCounter`: int64 variables, so the loop can checkpoint
them, report them in eval_report.json / TensorBoard and call `warn_if_new()` once per epoch).
Subsampling a user's own data (folder / manifest) is never inherited from a demo config: it needs
`data.subsample_own_data=true`, and every subsampling logs the images dropped per class.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.data import decode, loaders, long_tail, manifest, preprocessing, synthetic

OWN_DATA_SOURCES = ("folder", "manifest")
SOURCE_NAMES = ("synthetic",) + OWN_DATA_SOURCES + tuple(loaders.SUPPORTED_TFDS)


class SkipCounter(tf.Module):
    """Images dropped while the input pipeline runs: unreadable (read or decode error) or too large.

    The counts live in int64 variables updated inside the tf.data graph; they count skip events (a file
    that stays unreadable is counted again each epoch that reaches it) and are cumulative for one data
    configuration in one process (`reset()` starts over). Track the object in the training checkpoint
    to carry the counts across a resume.
    """

    def __init__(self):
        super().__init__(name="skip_counter")
        with tf.init_scope():
            self.unreadable = tf.Variable(0, dtype=tf.int64, trainable=False, name="unreadable")
            self.too_large = tf.Variable(0, dtype=tf.int64, trainable=False, name="too_large")
        self._reported = 0

    def counts(self) -> dict:
        """{"unreadable": n, "too_large": m, "total": n + m} (python ints, JSON-friendly)."""
        unreadable, too_large = int(self.unreadable.numpy()), int(self.too_large.numpy())
        return {"unreadable": unreadable, "too_large": too_large, "total": unreadable + too_large}

    def warn_if_new(self, where: str = "") -> dict:
        """Logs one warning if images were skipped since the last call (call it once per epoch)."""
        counts = self.counts()
        if counts["total"] > self._reported:
            logging.warning("%sskipped %d images while reading the data so far (%d unreadable: changed or "
                            "removed since they were indexed; %d over the decode limits)",
                            f"{where}: " if where else "", counts["total"], counts["unreadable"],
                            counts["too_large"])
            self._reported = counts["total"]
        return counts

    def reset(self) -> None:
        self.unreadable.assign(0)
        self.too_large.assign(0)
        self._reported = 0


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
    skipped_files: list = dataclasses.field(default_factory=list)  # bad images found while indexing
    superclass_of: Optional[np.ndarray] = None  # int64 [C] super-class of each class (synthetic data)
    too_large_files: list = dataclasses.field(default_factory=list)  # the oversized ones among skipped
    link_loops: list = dataclasses.field(default_factory=list)  # folder symlinks not followed twice
    dropped_per_class: Optional[np.ndarray] = None  # int64 [C] train images removed by subsampling
    skip_counter: Optional[SkipCounter] = None  # images dropped while reading (not for synthetic)
    eval_crops: int = 1  # views per eval image: eval batches are [B, 12, S, S, 3] when 12

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
    # Source payloads: arrays (synthetic), file lists (folder / manifest) or nothing (tfds, read lazily).
    train_payload: object = None
    eval_payload: object = None
    skipped_files: list = dataclasses.field(default_factory=list)
    too_large_files: list = dataclasses.field(default_factory=list)
    link_loops: list = dataclasses.field(default_factory=list)
    superclass_of: Optional[np.ndarray] = None
    dropped_per_class: Optional[np.ndarray] = None
    counter: Optional[SkipCounter] = None


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


# --------------------------------------------------------------------------------------------------
# Subsampling (explicit, logged per class)


def _subsample_train(split: _Split, class_names: list, data_cfg) -> tuple[_Split, np.ndarray]:
    """(subsampled split, images dropped per class) for data.imbalance_factor / data.balanced_cap."""
    num_classes = len(class_names)
    positions, labels = split.positions, split.labels
    before = np.bincount(labels, minlength=num_classes)
    if data_cfg.imbalance_factor > 1:
        if data_cfg.name in OWN_DATA_SOURCES:
            # A user's folder may already be long-tailed or have empty classes: order classes by size,
            # start from the largest, and keep what a class has when it falls short of its target.
            kept = long_tail.make_long_tailed(labels, data_cfg.imbalance_factor, seed=data_cfg.seed,
                                              num_classes=num_classes, n_max=int(before.max()),
                                              class_order=np.argsort(-before, kind="stable"),
                                              keep_shortfall=True)
        else:
            kept = long_tail.make_long_tailed(labels, data_cfg.imbalance_factor, seed=data_cfg.seed,
                                              num_classes=num_classes)
        positions, labels = positions[kept], labels[kept]
    if data_cfg.balanced_cap > 0:
        kept = long_tail.balanced_subset(labels, data_cfg.balanced_cap, seed=data_cfg.seed)
        positions, labels = positions[kept], labels[kept]
    dropped = (before - np.bincount(labels, minlength=num_classes)).astype(np.int64)
    if dropped.any():
        per_class = ", ".join(f"{name}: -{d}" for name, d in zip(class_names, dropped) if d)
        logging.warning("data subsampling (imbalance_factor=%g, balanced_cap=%d) dropped %d of %d training "
                        "images; dropped per class: %s", data_cfg.imbalance_factor, data_cfg.balanced_cap,
                        int(dropped.sum()), int(before.sum()), per_class)
    return _Split(positions=positions, labels=labels, source_size=split.source_size), dropped


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


def _limits(data_cfg) -> decode.DecodeLimits:
    return decode.DecodeLimits(max_pixels=data_cfg.max_image_pixels, max_aspect_ratio=data_cfg.max_aspect_ratio)


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
    limits = _limits(data_cfg)
    train_info = loaders.scan_image_folder(train_root, limits=limits)
    infos = [train_info]
    if eval_root == train_root:
        eval_info = train_info
    else:
        eval_info = loaders.scan_image_folder(eval_root, limits=limits)
        infos.append(eval_info)
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
                  skipped_files=[f for info in infos for f in info.skipped_files],
                  too_large_files=[f for info in infos for f in info.too_large_files],
                  link_loops=[f for info in infos for f in info.link_loops])


def _index_manifest(data_cfg, keep_fn) -> _Index:
    if not data_cfg.data_dir:
        raise ValueError("data.name='manifest' needs data.data_dir (a CSV or JSONL file of path,label[,split] "
                         "rows)")
    rows = manifest.read_manifest(data_cfg.data_dir)
    if data_cfg.eval_manifest:
        train_rows = rows.select(data_cfg.train_split)
        eval_rows = manifest.read_manifest(data_cfg.eval_manifest).select(data_cfg.eval_split)
    elif rows.splits is not None:
        train_rows, eval_rows = rows.select(data_cfg.train_split), rows.select(data_cfg.eval_split)
        for split, part in ((data_cfg.train_split, train_rows), (data_cfg.eval_split, eval_rows)):
            if not len(part):
                raise ValueError(f"manifest {rows.source!r} has no row with split {split!r} (splits: "
                                 f"{rows.split_names()})")
    else:
        logging.warning("manifest %s has no split column and data.eval_manifest is empty: training and "
                        "evaluating on the same images", rows.source)
        train_rows = eval_rows = rows
    class_names = manifest.class_names_of(train_rows.labels)  # eval rows must use these classes
    limits = _limits(data_cfg)
    train_files, train_labels, skipped, too_large = manifest.verify_rows(train_rows, class_names, limits,
                                                                   f"manifest {rows.source}")
    if eval_rows is train_rows:
        eval_files, eval_labels = train_files, train_labels
    else:
        eval_files, eval_labels, eval_skipped, eval_too_large = manifest.verify_rows(
            eval_rows, class_names, limits, f"manifest {data_cfg.eval_manifest or rows.source} (eval)")
        skipped, too_large = skipped + eval_skipped, too_large + eval_too_large
    mapping, names = keep_fn(class_names)
    return _Index(name="manifest", class_names=names, train=_apply_map(train_labels, mapping),
                  eval=_apply_map(eval_labels, mapping), train_payload=train_files, eval_payload=eval_files,
                  skipped_files=skipped, too_large_files=too_large)


def _index_tfds(data_cfg, keep_fn) -> _Index:
    name = data_cfg.name
    builder = loaders.tfds_builder(name, data_cfg.data_dir or None)
    class_names = loaders.tfds_class_names(builder)
    mapping, names = keep_fn(class_names)
    train_labels = loaders.read_tfds_labels(name, data_cfg.train_split, builder=builder)
    eval_labels = loaders.read_tfds_labels(name, data_cfg.eval_split, builder=builder)
    return _Index(name=name, class_names=names, train=_apply_map(train_labels, mapping),
                  eval=_apply_map(eval_labels, mapping))


_INDEXERS = {"synthetic": _index_synthetic, "folder": _index_folder, "manifest": _index_manifest}


def _mtime(path: str) -> float:
    return os.path.getmtime(path) if path and os.path.isfile(path) else 0.0


_INDEX_CACHE: dict = {}  # key -> _Index, the few most recent configurations
_INDEX_CACHE_SIZE = 8


def _make_index(data_cfg) -> _Index:
    def keep_fn(class_names):
        keep = read_class_filter(data_cfg.class_filter, class_names) if data_cfg.class_filter else None
        names = list(class_names) if keep is None else [class_names[i] for i in keep]
        return _label_map(len(class_names), keep), names

    index = _INDEXERS.get(data_cfg.name, _index_tfds)(data_cfg, keep_fn)
    if not index.train.labels.size:
        raise ValueError(f"data.train_split={data_cfg.train_split!r} of {data_cfg.name!r} has no example "
                         f"of the kept classes")
    index.train, index.dropped_per_class = _subsample_train(index.train, index.class_names, data_cfg)
    if data_cfg.name != "synthetic":
        index.counter = SkipCounter()
    return index


def build_index(data_cfg) -> _Index:
    """The (cached) label index of a data config: class names, kept positions and labels per split.

    Cached on the fields that define it (not image size, batch or augmentation) and on the
    modification times of the files they name, so an edited manifest or class filter is re-read.
    """
    if data_cfg.name not in SOURCE_NAMES:
        raise ValueError(f"unknown data.name {data_cfg.name!r}; expected one of {list(SOURCE_NAMES)}")
    key = (data_cfg.name, data_cfg.data_dir, data_cfg.eval_manifest, data_cfg.train_split,
           data_cfg.eval_split, data_cfg.class_filter, data_cfg.imbalance_factor, data_cfg.balanced_cap,
           data_cfg.subsample_own_data, data_cfg.seed, data_cfg.max_image_pixels, data_cfg.max_aspect_ratio,
           dataclasses.astuple(data_cfg.synthetic), _mtime(data_cfg.class_filter), _mtime(data_cfg.data_dir),
           _mtime(data_cfg.eval_manifest))
    if key not in _INDEX_CACHE:
        if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[key] = _make_index(data_cfg)
    return _INDEX_CACHE[key]


# --------------------------------------------------------------------------------------------------
# tf.data


def _source_dataset(index: _Index, data_cfg, which: str) -> tuple[tf.data.Dataset, object]:
    """(dataset of (payload, int64 label), read_bytes) -- read_bytes maps a payload to encoded bytes,
    None for in-memory (synthetic) sources whose payload is a position into the image array.

    In-memory and file sources use positions 0..n-1 into the kept examples, so a full shuffle is cheap.
    """
    split = index.train if which == "train" else index.eval
    if index.name == "synthetic":
        return tf.data.Dataset.from_tensor_slices(np.arange(len(split.labels), dtype=np.int64)), None
    if index.name in OWN_DATA_SOURCES:
        payload = index.train_payload if which == "train" else index.eval_payload
        files = tf.constant(payload[split.positions])
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(split.labels), dtype=np.int64), split.labels))
        return ds, lambda position: tf.io.read_file(tf.gather(files, position))
    # tfds: keep the listed positions of the file-ordered split, with their new labels.
    ds, _ = loaders.load_tfds_encoded(index.name, data_cfg.train_split if which == "train"
                                      else data_cfg.eval_split, data_cfg.data_dir or None)
    new_label = np.full(split.source_size, -1, np.int64)  # position -> new label (-1: dropped)
    new_label[split.positions] = split.labels
    table = tf.constant(new_label)
    ds = ds.enumerate().map(lambda i, e: (e[0], tf.gather(table, i)))
    return ds.filter(lambda encoded, label: label >= 0), lambda encoded: encoded


def _synthetic_images(index: _Index, which: str):
    split = index.train if which == "train" else index.eval
    payload = index.train_payload if which == "train" else index.eval_payload
    images, labels = tf.constant(payload[split.positions]), tf.constant(split.labels)
    return lambda i, position: (i, tf.gather(images, position), tf.gather(labels, position))


def _counted_decode(ds: tf.data.Dataset, read_bytes, counter: SkipCounter, limits: decode.DecodeLimits,
                    finite: bool) -> tf.data.Dataset:
    """(payload, label) -> (i, uint8 image, label): unreadable and oversized elements dropped, counted.

    Read and decode errors drop an element (`ignore_errors`); the gaps they leave in the running index
    i are added to `counter.unreadable`. A finite dataset gets a sentinel (label -1) at the end so that
    trailing gaps are counted too.
    """
    if finite:
        dtype = ds.element_spec[0].dtype
        empty = tf.constant(b"") if dtype == tf.string else tf.constant(-1, dtype)
        ds = ds.concatenate(tf.data.Dataset.from_tensors((empty, tf.constant(-1, tf.int64))))

    def load(i, element):
        payload, label = element

        def real():
            return decode.decode_or_flag(read_bytes(payload), limits)

        image, ok = tf.cond(label >= 0, real, lambda: (tf.zeros([1, 1, 3], tf.uint8), tf.constant(False)))
        return i, image, label, ok

    def count(expected, element):
        i, image, label, ok = element
        counter.unreadable.assign_add(i - expected)
        counter.too_large.assign_add(tf.cast(tf.logical_and(label >= 0, tf.logical_not(ok)), tf.int64))
        return i + 1, element

    def is_ok(i, image, label, ok):
        return ok

    def without_flag(i, image, label, ok):
        return i, image, label

    ds = ds.enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    ds = ds.scan(tf.constant(0, tf.int64), count)
    ds = ds.filter(is_ok).map(without_flag)
    options = tf.data.Options()
    # The counter's variables are state outside the iterator; they are checkpointed on their own.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return ds.with_options(options)


def build_datasets(data_cfg, global_batch_size: Optional[int] = None,
                   input_context: Optional[tf.distribute.InputContext] = None):
    """Train and eval datasets of `data_cfg` (a `finegrain_tf.train.config.DataConfig`).

    Args:
      data_cfg: data.name is "synthetic", "folder" (data_dir = root; `<root>/<train_split>` and
        `<root>/<eval_split>` when present, else the root for both), "manifest" (data_dir = a CSV/JSONL
        file, see `data.manifest`) or one of `loaders.SUPPORTED_TFDS`.
      global_batch_size: default `data_cfg.batch_size`.
      input_context: from `strategy.distribute_datasets_from_function`: shard by input pipeline and
        batch per replica.

    Returns:
      (train_ds, eval_ds, info): train_ds yields (float32 [B, S, S, 3] in [0, 255], int64 [B]),
      shuffled (seeded), repeated, batch remainder dropped; eval_ds is centre-cropped ([B, 12, S, S, 3]
      views with data.eval_crops=12), not repeated, last batch kept; info is a `DatasetInfo`.
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
    aug_seed = int(data_cfg.seed) * 1009 + shard_id
    augment = dataclasses.asdict(data_cfg.augment)  # preprocess_train's keyword options
    limits = _limits(data_cfg)

    def decoded(ds, read_bytes, which, finite):
        """(i, uint8 image, int64 label) elements of a shuffled/sharded source."""
        if read_bytes is None:
            return ds.enumerate().map(_synthetic_images(index, which), num_parallel_calls=tf.data.AUTOTUNE)
        return _counted_decode(ds, read_bytes, index.counter, limits, finite)

    # Train: shard -> shuffle -> repeat -> decode (skip + count) -> augment (stateless, per-element
    # seeds from the running index) -> batch.
    train_src, read_bytes = _source_dataset(index, data_cfg, "train")
    if num_shards > 1:
        train_src = train_src.shard(num_shards, shard_id)
    in_memory = read_bytes is None or index.name in OWN_DATA_SOURCES  # positions: a full shuffle is cheap
    buffer = len(index.train.labels) if in_memory else min(data_cfg.shuffle_buffer, len(index.train.labels))
    train_src = train_src.shuffle(max(buffer, 1), seed=aug_seed, reshuffle_each_iteration=True).repeat()

    def train_map(i, image, label):
        seed = tf.stack([tf.constant(aug_seed, tf.int64), i])
        return preprocessing.preprocess_train(image, image_size, resize_size, seed=seed, **augment), label

    train_ds = decoded(train_src, read_bytes, "train", finite=False)
    train_ds = train_ds.map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    train_ds = train_ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    # Eval: shard -> decode (skip + count) -> centre crop or 12 views -> batch (keep the remainder).
    eval_src, read_bytes = _source_dataset(index, data_cfg, "eval")
    if num_shards > 1:
        eval_src = eval_src.shard(num_shards, shard_id)
    if data_cfg.eval_crops == 12:
        view = functools.partial(preprocessing.multi_crop, image_size=image_size, resize_size=resize_size)
    else:
        view = functools.partial(preprocessing.preprocess_eval, image_size=image_size, resize_size=resize_size)
    eval_ds = decoded(eval_src, read_bytes, "eval", finite=True)
    eval_ds = eval_ds.map(lambda i, image, label: (view(image), label), num_parallel_calls=tf.data.AUTOTUNE)
    eval_ds = eval_ds.batch(batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
    num_classes = len(index.class_names)
    info = DatasetInfo(
        name=index.name, num_classes=num_classes, class_names=list(index.class_names),
        train_class_counts=np.bincount(index.train.labels, minlength=num_classes).astype(np.int64),
        eval_class_counts=np.bincount(index.eval.labels, minlength=num_classes).astype(np.int64),
        num_train=int(len(index.train.labels)), num_eval=int(len(index.eval.labels)),
        skipped_files=list(index.skipped_files), too_large_files=list(index.too_large_files),
        link_loops=list(index.link_loops), dropped_per_class=index.dropped_per_class,
        skip_counter=index.counter, eval_crops=int(data_cfg.eval_crops),
        superclass_of=None if index.superclass_of is None else np.array(index.superclass_of))
    return train_ds, eval_ds, info
