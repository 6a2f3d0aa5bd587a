"""The seeds' image preprocessing, as pure graph-safe TF ops on a single image.

Cui's dissertation, ch.3 "Implementation details" (kernel pooling experiments): "we resize the original
image so that its shorter side is S while keeping its aspect ratio. Then we crop a S x S square image
[...]. During training, a random square image is cropped. Both the original crop and its horizontal
flip are utilized [...]. During inference, the center image is cropped." (ch.4 likewise centre-crops at
inference.) Here the shorter side goes to `resize_size`, which defaults to the common ImageNet margin
`round(image_size * 8 / 7)` (256 for 224, 342 for 299, 512 for 448); `resize_size = image_size` is
exactly the ch.3 protocol. Outputs are float32 in [0, 255]; backbone-specific normalisation (the
"subtract the pixel-wise mean" step) lives in the model.

The same functions are used by the training input pipeline and inside exported SavedModels (the
serving signature decodes bytes with `decode_image` -- the bounded decoder of `data.decode`, re-exported
here -- and applies `preprocess_eval`), so they use only
stock TF ops and work on images of any size, including images smaller than the crop (they are
upscaled).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from finegrain_tf.data.decode import decode_image  # noqa: F401  (the bounded decoder; exports use it from here)
from finegrain_tf.utils import checks


def default_resize_size(image_size: int) -> int:
    """Shorter side before cropping: round(image_size * 8 / 7) (224 -> 256, 299 -> 342, 448 -> 512)."""
    return int(round(image_size * 8.0 / 7.0))


def check_sizes(image_size, resize_size) -> tuple[int, int]:
    """(image_size, resize_size) validated, with resize_size 0 replaced by the default margin."""
    image_size = checks.positive_int(image_size, "image_size")
    resize_size = checks.non_negative_int(resize_size, "resize_size") or default_resize_size(image_size)
    if resize_size < image_size:
        raise ValueError(f"resize_size={resize_size} is smaller than image_size={image_size}")
    return image_size, resize_size


_check_sizes = check_sizes  # the old private name, still used by serving/export_module.py


def _as_rgb(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"expected a single image [H, W, C], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return image


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes so that the shorter side is `size` (aspect ratio kept); returns float32 in [0, 255].

    Bilinear with anti-aliasing (area-correct when shrinking); both sides are at least `size`.
    """
    image = _as_rgb(image)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.minimum(height, width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), size)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), size)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_height, new_width]),
                              method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def central_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centred `size x size` window (offsets (H - size) // 2, (W - size) // 2)."""
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    crop = image[top:top + size, left:left + size, :]
    crop.set_shape([size, size, 3])
    return crop


def preprocess_train(image: tf.Tensor, image_size: int, resize_size: int = 0,
                     seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Training preprocessing: resize shorter side, random square crop, random horizontal flip.

    Args:
      image: uint8 (or float in [0, 255]) [H, W, 3] (1 or 4 channels are converted).
      image_size: crop side S.
      resize_size: shorter side before cropping; 0 = round(S * 8 / 7).
      seed: None for stateful random ops, or an int32/int64 [2] tensor for stateless (reproducible)
        ones, e.g. `(data_seed, element_index)`.

    Returns:
      float32 [S, S, 3] in [0, 255].
    """
    image_size, resize_size = check_sizes(image_size, resize_size)
    resized = resize_shorter_side(image, resize_size)
    crop_shape = tf.constant([image_size, image_size, 3])
    if seed is None:
        crop = tf.image.random_crop(resized, crop_shape)
        crop = tf.image.random_flip_left_right(crop)
    else:
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        crop = tf.image.stateless_random_crop(resized, crop_shape, seed=seeds[0])
        crop = tf.image.stateless_random_flip_left_right(crop, seed=seeds[1])
    crop.set_shape([image_size, image_size, 3])
    return crop


def preprocess_eval(image: tf.Tensor, image_size: int, resize_size: int = 0) -> tf.Tensor:
    """Evaluation preprocessing: resize shorter side to `resize_size`, centre `image_size` crop.

    Returns float32 [S, S, 3] in [0, 255]; deterministic.
    """
    image_size, resize_size = check_sizes(image_size, resize_size)
    return central_crop(resize_shorter_side(image, resize_size), image_size)
