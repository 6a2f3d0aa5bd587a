"""Geo-tagged photos: the manifest format, duplicate fingerprints, §4.1 preprocessing, pair datasets.

A manifest lists one photo per row, as CSV (with a header) or JSON Lines:

  path,latitude,longitude,timestamp,user_id[,source]
  photos/0001.jpg,40.7061,-73.9969,2015-06-01T14:03:00,alice

`timestamp` is an ISO 8601 date/time (UTC unless it carries an offset) or seconds since the epoch;
relative paths are relative to the manifest's folder. Every bad row raises a ValueError naming the
file, the row and the value. `GeoPhotos` is what the pair sampler (`finegrain_tf.sampling.geo`) and
`pair_dataset` consume; the embedded synthetic set (`synthetic_geo`) produces the same structure
with its pixels in memory.

Preprocessing (§4.1.1-4.1.2): square resize to 224 x 224 (no crop: the aspect ratio is not kept),
optional subtraction of the dataset mean pixel, and augmentation by flips (horizontal and vertical),
rotation up to 20 degrees and zoom up to 5 % with Keras preprocessing layers -- never colour
augmentation, since colour (time of day, season) is what a fine-grained similarity must keep.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.data.decode import decode_image
from finegrain_tf.data.loaders import find_bad_images
from finegrain_tf.data.manifest import JSON_SUFFIXES, read_rows

REQUIRED_COLUMNS = ("path", "latitude", "longitude", "timestamp", "user_id")
OPTIONAL_COLUMNS = ("source",)
DUPLICATE_MODES = ("none", "bytes", "phash")


@dataclasses.dataclass
class GeoPhotos:
    """Geo-tagged photos: metadata arrays [N] and either file paths or in-memory pixels."""
    latitudes: np.ndarray  # float64 degrees
    longitudes: np.ndarray  # float64 degrees
    timestamps: np.ndarray  # float64 seconds since the epoch (UTC)
    users: np.ndarray  # str user ids
    sources: np.ndarray  # str (where the photo came from; "" if unknown)
    paths: Optional[list] = None  # image files, or None when `images` holds the pixels
    images: Optional[np.ndarray] = None  # uint8 [N, H, W, 3]
    skipped: list = dataclasses.field(default_factory=list)  # rows dropped as unreadable images

    def __post_init__(self):
        if (self.paths is None) == (self.images is None):
            raise ValueError("GeoPhotos needs exactly one of `paths` and `images`")

    def __len__(self) -> int:
        return int(self.latitudes.size)

    @classmethod
    def from_paths(cls, paths, source: str = "") -> "GeoPhotos":
        """Image files without geo tags (rated triplets, Middlebury views): zero metadata."""
        zeros = np.zeros(len(paths))
        return cls(zeros, zeros, zeros, np.asarray([""] * len(paths)), np.asarray([source] * len(paths)),
                   paths=list(paths))

    def subset(self, keep: np.ndarray) -> "GeoPhotos":
        """The photos at indices (or where the boolean mask is True) `keep`."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        return GeoPhotos(self.latitudes[index], self.longitudes[index], self.timestamps[index],
                         self.users[index], self.sources[index],
                         None if self.paths is None else [self.paths[i] for i in index],
                         None if self.images is None else self.images[index], list(self.skipped))

    def image_dataset(self) -> tf.data.Dataset:
        """uint8 [H, W, 3] images in order (files decoded in the graph)."""
        if self.images is not None:
            return tf.data.Dataset.from_tensor_slices(self.images)
        return tf.data.Dataset.from_tensor_slices(list(self.paths)).map(
            lambda path: decode_image(tf.io.read_file(path)), num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------------
# Manifest


def parse_timestamp(value, where: str) -> float:
    """ISO 8601 text or epoch seconds -> float seconds since the epoch (naive times are UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = datetime.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{where}: timestamp {value!r} is neither an ISO 8601 date/time nor "
                                 f"epoch seconds") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            seconds = when.timestamp()
    if not math.isfinite(seconds):
        raise ValueError(f"{where}: timestamp {value!r} is not finite")
    return seconds


def _coordinate(value, name: str, limit: float, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} {value!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > limit:
        raise ValueError(f"{where}: {name} {value!r} is outside [-{limit:g}, {limit:g}]")
    return number


def load_manifest(path: str, verify_images: bool = True) -> GeoPhotos:
    """Reads a CSV or JSONL manifest of geo-tagged photos (see the module docstring).

    With `verify_images`, every image is decoded once; unreadable or corrupt ones are skipped,
    counted (`GeoPhotos.skipped`) and reported in a warning. Missing fields, bad coordinates or
    timestamps raise a ValueError naming the row.
    """
    if not path or not os.path.isfile(path):
        raise ValueError(f"manifest {path!r} does not exist or is not a file")
    base = os.path.dirname(os.path.abspath(path))
    columns = {name: [] for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{where}: missing {missing} (required: {list(REQUIRED_COLUMNS)})")
        unknown = sorted(set(row) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS))
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown} (allowed: "
                             f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
        columns["path"].append(os.path.join(base, str(row["path"])))
        columns["latitude"].append(_coordinate(row["latitude"], "latitude", 90.0, where))
        columns["longitude"].append(_coordinate(row["longitude"], "longitude", 180.0, where))
        columns["timestamp"].append(parse_timestamp(row["timestamp"], where))
        columns["user_id"].append(str(row["user_id"]))
        columns["source"].append(str(row.get("source") or ""))
    if not columns["path"]:
        raise ValueError(f"manifest {path!r} has no photos")
    photos = GeoPhotos(np.asarray(columns["latitude"]), np.asarray(columns["longitude"]),
                       np.asarray(columns["timestamp"]), np.asarray(columns["user_id"]),
                       np.asarray(columns["source"]), paths=columns["path"])
    if verify_images:
        bad, too_large = find_bad_images(photos.paths)
        bad = set(bad)
        if bad:
            logging.warning("manifest %s: skipped %d unreadable, corrupt or oversized (%d) images "
                            "(first: %s)", path, len(bad), len(too_large), sorted(bad)[0])
            photos = photos.subset(np.array([p not in bad for p in photos.paths]))
            photos.skipped = sorted(bad)
            if len(photos) == 0:
                raise ValueError(f"manifest {path!r}: all {len(bad)} images are unreadable or corrupt")
    return photos


def write_manifest(photos: GeoPhotos, path: str, paths: Optional[Sequence[str]] = None) -> str:
    """Writes a CSV or JSONL manifest (by extension) of `photos`, with `paths` (default photos.paths)."""
    paths = list(paths if paths is not None else photos.paths)
    if len(paths) != len(photos):
        raise ValueError(f"{len(paths)} paths for {len(photos)} photos")
    rows = [{"path": p, "latitude": repr(float(la)), "longitude": repr(float(lo)),
             "timestamp": datetime.datetime.fromtimestamp(float(t), datetime.timezone.utc).isoformat(),
             "user_id": str(u), "source": str(s)}
            for p, la, lo, t, u, s in zip(paths, photos.latitudes, photos.longitudes, photos.timestamps,
                                          photos.users, photos.sources)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        if path.lower().endswith(JSON_SUFFIXES):
            f.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------
# Duplicate fingerprints


def _difference_hash(gray: np.ndarray) -> str:
    """64-bit dHash of a grayscale image resized to 9 x 8 (neighbouring-column comparisons), as hex."""
    small = tf.image.resize(gray[..., None], (8, 9), method="area", antialias=True).numpy()[..., 0]
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def duplicate_keys(photos: GeoPhotos, mode: str = "bytes") -> Optional[np.ndarray]:
    """One key per photo; equal keys mark duplicates (the sampler keeps the first).

    mode: "bytes" (SHA-256 of the file, or of the pixels in memory: byte-identical copies),
    "phash" (64-bit difference hash of the grayscale image: re-encoded or resized copies too),
    or "none" (returns None).
    """
    if mode not in DUPLICATE_MODES:
        raise ValueError(f"duplicate mode {mode!r} is not one of {list(DUPLICATE_MODES)}")
    if mode == "none":
        return None
    if mode == "bytes":
        if photos.images is not None:
            return np.asarray([hashlib.sha256(image.tobytes()).hexdigest() for image in photos.images])
        digests = []
        for path in photos.paths:
            with open(path, "rb") as f:
                digests.append(hashlib.sha256(f.read()).hexdigest())
        return np.asarray(digests)
    keys = []
    for image in photos.image_dataset().as_numpy_iterator():
        keys.append(_difference_hash(image.astype(np.float32).mean(axis=-1)))
    return np.asarray(keys)


# --------------------------------------------------------------------------------------------------
# Preprocessing and augmentation (§4.1.1-4.1.2)


def square_resize(image: tf.Tensor, size: int = 224, mean_pixel: Optional[Sequence[float]] = None) -> tf.Tensor:
    """Resizes to size x size (aspect ratio not kept, §4.1.1); float32, minus `mean_pixel` if given."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    resized = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    if mean_pixel is not None:
        mean = np.asarray(mean_pixel, np.float32).reshape(-1)
        if mean.shape != (3,):
            raise ValueError(f"mean_pixel must have 3 values (R, G, B), got {mean_pixel!r}")
        resized = resized - mean
    return resized


def dataset_mean_pixel(images: tf.data.Dataset, size: int) -> np.ndarray:
    """The per-channel mean over a dataset of images, after `square_resize` (for mean subtraction)."""
    total, count = np.zeros(3, np.float64), 0
    for batch in images.map(lambda image: square_resize(image, size)).batch(256).as_numpy_iterator():
        total += batch.sum(axis=(0, 1, 2), dtype=np.float64)
        count += batch.shape[0] * size * size
    if count == 0:
        raise ValueError("cannot compute a mean pixel over an empty dataset")
    return (total / count).astype(np.float32)


def augmentation(rotation_deg: float = 20.0, zoom: float = 0.05, seed: Optional[int] = None) -> keras.Sequential:
    """§4.1.2: random horizontal + vertical flips, rotation up to `rotation_deg`, zoom up to `zoom`.

    No colour augmentation. Keras preprocessing layers, usable in tf.data or in a model.
    """
    if not 0 <= rotation_deg <= 180:
        raise ValueError(f"rotation_deg must be in [0, 180], got {rotation_deg!r}")
    if not 0 <= zoom < 1:
        raise ValueError(f"zoom must be in [0, 1), got {zoom!r}")
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(rotation_deg / 360.0, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed),
    ], name="geo_augmentation")


def pair_dataset(photos: GeoPhotos, left, right, labels, image_size: int = 224, training: bool = False,
                 augment: bool = False, mean_pixel: Optional[Sequence[float]] = None, seed: int = 0,
                 shuffle_buffer: int = 4096) -> tf.data.Dataset:
    """Unbatched ({"image_a", "image_b"}: float32 [S, S, 3], label int64) for pairs of photo indices.

    `training` shuffles (repeating is left to the caller); `augment` applies `augmentation()` to each
    image independently.
    """
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    labels = np.asarray(labels, np.int64)
    if not left.shape == right.shape == labels.shape or left.ndim != 1:
        raise ValueError(f"left, right and labels must be [P] arrays of one length, got shapes "
                         f"{left.shape}, {right.shape}, {labels.shape}")
    for name, index in (("left", left), ("right", right)):
        if index.size and (index.min() < 0 or index.max() >= len(photos)):
            raise ValueError(f"{name} index {int(index.max() if index.max() >= len(photos) else index.min())} "
                             f"is outside the {len(photos)} photos")
    if photos.images is not None:
        pixels = tf.constant(photos.images)

        def load(i):
            return pixels[i]
    else:
        paths = tf.constant(list(photos.paths))

        def load(i):
            return decode_image(tf.io.read_file(paths[i]))

    def prepare(i):
        return square_resize(load(i), image_size, mean_pixel)

    ds = tf.data.Dataset.from_tensor_slices((left, right, labels))
    if training:
        ds = ds.shuffle(min(shuffle_buffer, max(len(labels), 1)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda a, b, y: ({"image_a": prepare(a), "image_b": prepare(b)}, y),
                num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        layers = augmentation(seed=seed)
        ds = ds.map(lambda x, y: ({k: layers(v, training=True) for k, v in x.items()}, y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds
