"""Real-data loaders: tfds datasets by name and class-per-subfolder image folders.

Both yield `(uint8 image [H, W, 3], int64 label)` elements; images keep their original size (the
preprocessing in `finegrain_tf.data.preprocessing` resizes them). Corrupt or unreadable files in an
image folder are found by a verification pass, skipped and counted (a warning with the count), never
a crash.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.data.preprocessing import decode_image

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
    ds = ds.map(lambda encoded, label: (decode_image(encoded), label), num_parallel_calls=tf.data.AUTOTUNE)
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
    from tqdm import tqdm
    with tqdm(total=total, desc=f"{name}:{split} labels", unit="ex", disable=not progress,
              leave=False) as bar:
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
    skipped_files: list  # corrupt / unreadable image files

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def num_files(self) -> int:
        return len(self.files)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names)).astype(np.int64)


def _read_and_decode(path: tf.Tensor) -> tf.Tensor:
    return decode_image(tf.io.read_file(path))


def find_bad_images(files: Sequence[str]) -> list:
    """Files that cannot be read or decoded as images (full decode, parallel, in TF).

    Each file is decoded once in a tf.data pipeline with `ignore_errors`; the indices that do not come
    out are the bad ones.
    """
    if not files:
        return []
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), list(files)))
    ds = ds.map(lambda i, path: (i, tf.shape(_read_and_decode(path))),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors().map(lambda i, shape: i).batch(1024)
    good = np.zeros(len(files), bool)
    for batch in ds.as_numpy_iterator():
        good[batch] = True
    return [f for f, ok in zip(files, good) if not ok]


def scan_image_folder(root: str, verify: bool = True,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS) -> FolderInfo:
    """Lists `root/<class_name>/**/<image>` (class names sorted) and verifies every image once.

    Files whose extension is not an image extension are ignored. With `verify`, every image is decoded
    once; corrupt or unreadable ones are left out, counted and reported in a warning.

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
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in filenames
                         if f.lower().endswith(extensions) and not f.startswith("."))
        found.sort()
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise ValueError(f"image folder {root!r} has class subfolders {class_names[:5]}... but no images "
                         f"with extensions {list(extensions)}")
    skipped = find_bad_images(files) if verify else []
    if skipped:
        bad = set(skipped)
        keep = [i for i, f in enumerate(files) if f not in bad]
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
        logging.warning("skipped %d corrupt images in %s (first: %s)", len(skipped), root, skipped[0])
        if not files:
            raise ValueError(f"image folder {root!r}: all {len(skipped)} images are corrupt or unreadable")
    return FolderInfo(root=root, class_names=class_names, files=files,
                      labels=np.asarray(labels, np.int64), skipped_files=skipped)


def folder_dataset(files: Sequence[str], labels: np.ndarray) -> tf.data.Dataset:
    """(uint8 image, int64 label) from file paths; undecodable files are dropped (safety net)."""
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.asarray(labels, np.int64)))
    ds = ds.map(lambda path, label: (_read_and_decode(path), label), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors(log_warning=True)


def load_image_folder(root: str, verify: bool = True, with_info: bool = False):
    """Class-per-subfolder image folder (as keras `image_dataset_from_directory`).

    Args:
      root: directory with one subfolder per class (sorted names give labels 0..C-1).
      verify: decode every image once first, skip and count the corrupt ones (see `scan_image_folder`).
      with_info: return the `FolderInfo` (class_names, files, num_skipped, skipped_files) instead of
        the class names.

    Returns:
      (Dataset of (uint8 image [H, W, 3], int64 label) in sorted file order, class_names) or
      (dataset, FolderInfo) with `with_info=True`.
    """
    info = scan_image_folder(root, verify=verify)
    ds = folder_dataset(info.files, info.labels)
    return (ds, info) if with_info else (ds, info.class_names)
