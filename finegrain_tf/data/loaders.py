"""Real-data loaders: tfds datasets by name and class-per-subfolder image folders.

Both yield `(uint8 image [H, W, 3], int64 label)` elements; images keep their original size (the
preprocessing in `finegrain_tf.data.preprocessing` resizes them). Every decode is bounded
(`finegrain_tf.data.decode`): images whose header declares more pixels or a more extreme aspect ratio
than the limits are never decoded. Corrupt, unreadable or oversized files in an image folder are found
by a verification pass, skipped and counted (a warning with the counts), never a crash.

Counting is honest: `scan_image_folder` follows symbolic links but visits every real directory and
every real file once, so a link loop (`ln -s . data/a/loop`) neither multiplies a class's images nor
hangs the walk; it is reported in a warning naming the link.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.data import decode
from finegrain_tf.utils.progress import ProgressBar

SUPPORTED_TFDS = ("caltech_birds2011", "cars196", "oxford_flowers102", "stanford_dogs", "food101",
                  "i_naturalist2017", "cifar10", "cifar100")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


# --------------------------------------------------------------------------------------------------
# tfds


def _check_tfds_name(name: str) -> None:
    if name not in SUPPORTED_TFDS:
        raise ValueError(f"unknown dataset name {name!r}; supported tfds datasets: {list(SUPPORTED_TFDS)} "
                         f"(or 'synthetic' / 'folder' in the training config)")


def tfds_builder(name: str, data_dir: Optional[str] = None, download: bool = False):
    """The tfds builder of a supported dataset (downloads and prepares it when `download`)."""
    import tensorflow_datasets as tfds

    _check_tfds_name(name)
    builder = tfds.builder(name, data_dir=data_dir or None)
    if download:
        builder.download_and_prepare()
    return builder


def tfds_class_names(builder) -> list:
    return list(builder.info.features["label"].names)


def load_tfds_encoded(name: str, split: str, data_dir: Optional[str] = None, download: bool = False,
                      builder=None):
    """Dataset of (encoded image bytes, int64 label) in file order, with only those two features read.

    Partial decoding skips the other features (boxes, masks, ids) and leaves the image encoded so
    that shuffling holds small byte strings; decode with `preprocessing.decode_image`.
    Returns (dataset, class_names).
    """
    import tensorflow_datasets as tfds

    builder = builder or tfds_builder(name, data_dir, download)
    decoders = tfds.decode.PartialDecoding({"image": True, "label": True},
                                           decoders={"image": tfds.decode.SkipDecoding()})
    try:
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    except AssertionError as e:  # tfds: "could not find data in ..."
        raise ValueError(f"tfds dataset {name!r} is not prepared in data_dir={builder.data_dir!r}: run "
                         f"`tfds build {name} --data_dir=<dir>` (or load_tfds(..., download=True)) "
                         f"first ({e})") from None
    except (ValueError, KeyError) as e:
        raise ValueError(f"tfds dataset {name!r}: bad split {split!r} ({e})") from None
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int64)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds, tfds_class_names(builder)


def load_tfds(name: str, split: str, data_dir: Optional[str] = None, download: bool = False):
    """Dataset of (uint8 image [H, W, 3], int64 label) of a supported tfds dataset, and its class names.

    Unknown names raise ValueError listing the supported ones. `download=False` expects the data to
    be prepared already under `data_dir` (or the tfds default).
    """
    ds, class_names = load_tfds_encoded(name, split, data_dir, download)
    ds = ds.map(lambda encoded, label: (decode.decode_image(encoded), label),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds, class_names


def read_tfds_labels(name: str, split: str, data_dir: Optional[str] = None, builder=None,
                     progress: bool = True) -> np.ndarray:
    """All labels of a split in file order (int64 [N]), read in one pass without decoding images.

    Uses the same reader and partial decoding as `load_tfds_encoded` (records are read whole from disk
    either way), so the order is exactly the one the image pipeline sees.
    """
    ds, _ = load_tfds_encoded(name, split, data_dir, builder=builder)
    ds = ds.map(lambda encoded, label: label).batch(4096)
    builder = builder or tfds_builder(name, data_dir)
    total = None
    try:
        total = int(builder.info.splits[split].num_examples) or None
    except Exception:  # unknown split info (e.g. under tfds.testing.mock_data)
        total = None
    chunks = []
    with ProgressBar(total=total, desc=f"{name}:{split} labels", unit="ex", enabled=progress) as bar:
        for batch in ds.as_numpy_iterator():
            chunks.append(batch.astype(np.int64))
            bar.update(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.int64)


# --------------------------------------------------------------------------------------------------
# Image folders


@dataclasses.dataclass
class FolderInfo:
    """What `scan_image_folder` found under a root: the usable files and the skipped ones."""
    root: str
    class_names: list
    files: list  # usable image paths
    labels: np.ndarray  # int64 [len(files)]
    skipped_files: list  # corrupt, unreadable or oversized image files (all skipped ones)
    too_large_files: list = dataclasses.field(default_factory=list)  # the oversized ones among them
    link_loops: list = dataclasses.field(default_factory=list)  # symlinks that led back to a visited dir

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def num_files(self) -> int:
        return len(self.files)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names)).astype(np.int64)


def find_bad_images(files: Sequence[str], limits: decode.DecodeLimits = decode.DEFAULT_LIMITS
                    ) -> tuple[list, list]:
    """(bad files, oversized files among them): files that cannot be read, decoded or are too large.

    Each file's header is checked against `limits` and, when within them, the image is decoded once,
    in a parallel tf.data pipeline; read and decode errors drop the element (`ignore_errors`), so the
    indices that do not come out are the unreadable ones.
    """
    if not files:
        return [], []

    def check(i, path):
        _, ok = decode.decode_or_flag(tf.io.read_file(path), limits)
        return i, ok

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), list(files)))
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(1024)
    seen = np.zeros(len(files), bool)
    within = np.zeros(len(files), bool)
    for index, ok in ds.as_numpy_iterator():
        seen[index] = True
        within[index] = ok
    bad = [f for f, s, w in zip(files, seen, within) if not (s and w)]
    too_large = [f for f, s, w in zip(files, seen, within) if s and not w]
    return bad, too_large


def _walk_class(class_dir: str, extensions: tuple, loops: list) -> list:
    """Image files under `class_dir` (links followed), each real directory and file visited once."""
    seen_dirs = {os.path.realpath(class_dir)}
    seen_files = set()
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in seen_dirs:
                loops.append(full)
                continue
            seen_dirs.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.startswith(".") or not f.lower().endswith(extensions):
                continue
            full = os.path.join(dirpath, f)
            real = os.path.realpath(full)
            if real not in seen_files:
                seen_files.add(real)
                found.append(full)
    return sorted(found)


def scan_image_folder(root: str, verify: bool = True, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                      limits: decode.DecodeLimits = decode.DEFAULT_LIMITS) -> FolderInfo:
    """Lists `root/<class_name>/**/<image>` (class names sorted) and verifies every image once.

    Files whose extension is not an image extension are ignored. Symbolic links are followed, but a
    link to a directory already visited (a loop such as `ln -s . root/a/loop`, or a second path to the
    same folder) is not entered again, and a file reached twice within a class counts once; such links
    are listed in `FolderInfo.link_loops` and named in a warning. With `verify`, every image's header
    is checked against `limits` and the image decoded once; corrupt, unreadable and oversized ones are
    left out, counted and reported in a warning.

    Raises:
      ValueError: `root` missing or not a directory, no class subfolders, or no images at all.
    """
    if not root or not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    class_names = sorted(d for d in os.listdir(root)
                         if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not class_names:
        raise ValueError(f"image folder {root!r} has no class subfolders (expected root/<class>/<image>)")
    extensions = tuple(e.lower() for e in extensions)
    files, labels, loops = [], [], []
    for label, name in enumerate(class_names):
        found = _walk_class(os.path.join(root, name), extensions, loops)
        files.extend(found)
        labels.extend([label] * len(found))
    if loops:
        logging.warning("image folder %s: %d symbolic link(s) lead back to a folder already visited and "
                        "were not followed again (each real file is counted once): %s", root, len(loops),
                        ", ".join(loops[:5]))
    if not files:
        raise ValueError(f"image folder {root!r} has class subfolders {class_names[:5]}... but no images "
                         f"with extensions {list(extensions)}")
    skipped, too_large = find_bad_images(files, limits) if verify else ([], [])
    if skipped:
        bad = set(skipped)
        keep = [i for i, f in enumerate(files) if f not in bad]
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
        logging.warning("image folder %s: skipped %d images (%d corrupt or unreadable, %d over the decode "
                        "limits: %s); first: %s", root, len(skipped), len(skipped) - len(too_large),
                        len(too_large), limits.describe(), skipped[0])
        if not files:
            raise ValueError(f"image folder {root!r}: all {len(skipped)} images are corrupt, unreadable or "
                             f"over the decode limits")
    return FolderInfo(root=root, class_names=class_names, files=files, labels=np.asarray(labels, np.int64),
                      skipped_files=skipped, too_large_files=too_large, link_loops=loops)


def folder_dataset(files: Sequence[str], labels: np.ndarray,
                   limits: decode.DecodeLimits = decode.DEFAULT_LIMITS) -> tf.data.Dataset:
    """(uint8 image, int64 label) from file paths; undecodable or oversized files are dropped."""
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.asarray(labels, np.int64)))
    ds = ds.map(lambda path, label: (decode.decode_image(tf.io.read_file(path), limits), label),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors(log_warning=True)


def load_image_folder(root: str, verify: bool = True, with_info: bool = False,
                      limits: decode.DecodeLimits = decode.DEFAULT_LIMITS):
    """Class-per-subfolder image folder (as keras `image_dataset_from_directory`).

    Args:
      root: directory with one subfolder per class (sorted names give labels 0..C-1).
      verify: check and decode every image once first, skip and count the bad ones (see
        `scan_image_folder`).
      with_info: return the `FolderInfo` (class_names, files, skipped_files, link_loops) instead of
        the class names.
      limits: decode limits (pixels, aspect ratio) beyond which an image is skipped.

    Returns:
      (Dataset of (uint8 image [H, W, 3], int64 label) in sorted file order, class_names) or
      (dataset, FolderInfo) with `with_info=True`.
    """
    info = scan_image_folder(root, verify=verify, limits=limits)
    ds = folder_dataset(info.files, info.labels, limits)
    return (ds, info) if with_info else (ds, info.class_names)
