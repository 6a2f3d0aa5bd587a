"""Entropy filter for grayscale and flat photos (seed 004 §4.1.1), in stock TF ops for tf.data.

"We first apply a Laplacian filter to each image and then find the Shannon entropy, pruning images
with an entropy below a threshold." The Laplacian is the 4-neighbour kernel [[0,1,0],[1,-4,1],[0,1,0]]
with symmetric (edge-mirroring) borders, i.e. `scipy.ndimage.laplace` with mode="reflect". The
filtered values are binned into unit-wide bins centred on integers (clipped to [-255, 255]) and the
entropy of that histogram is taken in bits.

Which signal is filtered (`channels`):
- "chroma" (default): the opponent colour channels R - G and R + G - 2B. A grayscale photo has no
  chroma at all, so its filtered image is all zero and its entropy 0; flat photos score near 0 too.
  This is how a Laplacian-entropy test can remove the grayscale photos the thesis wanted gone.
- "luma": the mean of R, G and B -- removes only flat / featureless photos.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import logging

CHANNELS = ("chroma", "luma")
_LIMIT = 255  # filtered values are clipped to [-_LIMIT, _LIMIT] before binning
_KERNEL = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)


def _signal(image: tf.Tensor, channels: str) -> tf.Tensor:
    """[H, W, C] float32 signal planes of one RGB image."""
    rgb = tf.cast(image, tf.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if channels == "chroma":
        return tf.stack([r - g, r + g - 2.0 * b], axis=-1)
    return ((r + g + b) / 3.0)[..., None]


def laplacian_entropy(image: tf.Tensor, channels: str = "chroma") -> tf.Tensor:
    """Shannon entropy (bits, float32 scalar) of the Laplacian-filtered image [H, W, 3] (uint8 or float
    in [0, 255]); see the module docstring."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {list(CHANNELS)}, got {channels!r}")
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and (image.shape.rank != 3 or image.shape[-1] not in (None, 3)):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    planes = _signal(image, channels)
    padded = tf.pad(planes, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    depth = planes.shape[-1]
    kernel = tf.constant(np.tile(_KERNEL[:, :, None, None], (1, 1, depth, 1)))
    filtered = tf.nn.depthwise_conv2d(padded[None], kernel, strides=[1, 1, 1, 1], padding="VALID")
    bins = tf.cast(tf.floor(tf.clip_by_value(tf.reshape(filtered, [-1]), -_LIMIT, _LIMIT) + 0.5), tf.int32)
    counts = tf.cast(tf.math.bincount(bins + _LIMIT, minlength=2 * _LIMIT + 1), tf.float32)
    p = counts / tf.reduce_sum(counts)
    return -tf.reduce_sum(tf.where(p > 0, p * tf.math.log(p) / tf.math.log(2.0), 0.0))


def entropy_keep_mask(images: tf.data.Dataset, threshold: float, channels: str = "chroma",
                      batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask [N], entropies [N]) over a dataset of images, computed in tf.data.

    Images with entropy < `threshold` are dropped; the number dropped is logged.
    """
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"entropy threshold must be a finite number >= 0, got {threshold!r}")
    scores = images.map(lambda image: laplacian_entropy(image, channels),
                        num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    entropies = np.concatenate([np.asarray(s) for s in scores.as_numpy_iterator()] or [np.zeros(0)])
    keep = entropies >= threshold
    logging.info("entropy filter (%s, threshold %.3g bits): dropped %d of %d images", channels, threshold,
                 int((~keep).sum()), keep.size)
    return keep, entropies.astype(np.float32)


def filter_by_entropy(dataset: tf.data.Dataset, threshold: float, channels: str = "chroma",
                      image_key=None) -> tf.data.Dataset:
    """`dataset.filter` keeping elements whose image has entropy >= threshold (streaming; uncounted).

    `image_key` picks the image from a tuple (an index) or dict (a key) element; None = the element.
    """
    def keep(*element):
        item = element[0] if len(element) == 1 else element
        image = item if image_key is None else item[image_key]
        return laplacian_entropy(image, channels) >= threshold

    return dataset.filter(keep)
