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


CROPS = ("square", "random_resized")
AUGMENT_DEFAULTS = {
    "crop": "square",  # "square": shorter side -> resize_size, random S x S crop (seed 000 ch.3)
    "scale_min": 0.08,  # random_resized: crop area / image area drawn from [scale_min, scale_max]
    "scale_max": 1.0,
    "aspect_min": 3.0 / 4.0,  # random_resized: crop width / height drawn from [aspect_min, aspect_max]
    "aspect_max": 4.0 / 3.0,
    "horizontal_flip": True,
    "vertical_flip": False,
    "rotation": 0.0,  # degrees: each image is rotated by an angle drawn from [-rotation, rotation]
    "zoom": 0.0,  # each image is scaled by a factor drawn from [1 - zoom, 1 + zoom] (> 1 zooms in)
}


def check_augment(options: dict, where: str = "") -> dict:
    """The augmentation options (AUGMENT_DEFAULTS' keys) validated; `where` prefixes the names in errors."""
    unknown = sorted(set(options) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; expected {sorted(AUGMENT_DEFAULTS)}")
    opts = {**AUGMENT_DEFAULTS, **options}
    checks.one_of(opts["crop"], f"{where}crop", CROPS)
    for name in ("horizontal_flip", "vertical_flip"):
        if not isinstance(opts[name], bool):
            raise ValueError(f"{where}{name} must be a bool, got {opts[name]!r}")
    checks.in_range(opts["scale_min"], f"{where}scale_min", 0.0, 1.0, low_inclusive=False)
    checks.in_range(opts["scale_max"], f"{where}scale_max", opts["scale_min"], 1.0)
    checks.in_range(opts["aspect_min"], f"{where}aspect_min", 0.0, None, low_inclusive=False)
    checks.in_range(opts["aspect_max"], f"{where}aspect_max", opts["aspect_min"], None)
    checks.in_range(opts["rotation"], f"{where}rotation", 0.0, 180.0)
    checks.in_range(opts["zoom"], f"{where}zoom", 0.0, 1.0, high_inclusive=False)
    return opts


def random_resized_crop(image: tf.Tensor, image_size: int, seed: tf.Tensor, scale=(0.08, 1.0),
                        aspect=(3.0 / 4.0, 4.0 / 3.0)) -> tf.Tensor:
    """Inception-style crop (seed 000 sec. 4.4.1): a window of area fraction in `scale` and width/height
    in `aspect`, resized to S x S. Falls back to the whole image when no window fits in 10 tries."""
    image = _as_rgb(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=list(aspect), area_range=list(scale), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.slice(image, begin, size)
    resized = tf.image.resize(tf.cast(window, tf.float32), [image_size, image_size], method="bilinear",
                              antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def rotate_and_zoom(image: tf.Tensor, angle_degrees, scale) -> tf.Tensor:
    """Rotates a float [H, W, 3] image about its centre and scales it (> 1 zooms in), keeping its size.

    One projective transform (the op Keras' RandomRotation / RandomZoom use), bilinear, edges filled by
    reflection.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    theta = tf.cast(angle_degrees, tf.float32) * (3.141592653589793 / 180.0)
    scale = tf.cast(scale, tf.float32)
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # output (x, y) samples input (cos x + sin y + a2, -sin x + cos y + b2): centre maps to centre
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None], output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    return out[0]


def preprocess_train(image: tf.Tensor, image_size: int, resize_size: int = 0,
                     seed: Optional[tf.Tensor] = None, **augment) -> tf.Tensor:
    """Training preprocessing: crop, flips, rotation/zoom, as `augment` says (AUGMENT_DEFAULTS).

    The defaults are the seeds' ch.3 protocol: resize the shorter side to `resize_size`, random
    S x S crop, random horizontal flip. `crop="random_resized"` is ch.4's Inception crop. Each random
    draw uses a stateless seed split from `seed`, so a given (seed, image) always gives the same crop.

    Args:
      image: uint8 (or float in [0, 255]) [H, W, 3] (1 or 4 channels are converted).
      image_size: output side S.
      resize_size: shorter side before a square crop; 0 = round(S * 8 / 7).
      seed: int32/int64 [2] tensor, e.g. `(data_seed, element_index)`; None draws one at random.
      **augment: crop, scale_min, scale_max, aspect_min, aspect_max, horizontal_flip, vertical_flip,
        rotation, zoom (see `AUGMENT_DEFAULTS`; validated by `check_augment`).

    Returns:
      float32 [S, S, 3] in [0, 255].
    """
    image_size, resize_size = check_sizes(image_size, resize_size)
    opts = check_augment(augment)
    if seed is None:
        seed = tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int64)
    seeds = tf.random.experimental.stateless_split(tf.cast(tf.convert_to_tensor(seed), tf.int64), num=5)
    if opts["crop"] == "random_resized":
        crop = random_resized_crop(image, image_size, seeds[0], (opts["scale_min"], opts["scale_max"]),
                                   (opts["aspect_min"], opts["aspect_max"]))
    else:
        crop = tf.image.stateless_random_crop(resize_shorter_side(image, resize_size),
                                              tf.constant([image_size, image_size, 3]), seed=seeds[0])
    if opts["horizontal_flip"]:
        crop = tf.image.stateless_random_flip_left_right(crop, seed=seeds[1])
    if opts["vertical_flip"]:
        crop = tf.image.stateless_random_flip_up_down(crop, seed=seeds[2])
    if opts["rotation"] > 0 or opts["zoom"] > 0:
        angle = tf.random.stateless_uniform([], seeds[3], -opts["rotation"], opts["rotation"])
        scale = tf.random.stateless_uniform([], seeds[4], 1.0 - opts["zoom"], 1.0 + opts["zoom"])
        crop = tf.clip_by_value(rotate_and_zoom(crop, angle, scale), 0.0, 255.0)
    crop.set_shape([image_size, image_size, 3])
    return crop


def preprocess_eval(image: tf.Tensor, image_size: int, resize_size: int = 0) -> tf.Tensor:
    """Evaluation preprocessing: resize shorter side to `resize_size`, centre `image_size` crop.

    Returns float32 [S, S, 3] in [0, 255]; deterministic.
    """
    image_size, resize_size = check_sizes(image_size, resize_size)
    return central_crop(resize_shorter_side(image, resize_size), image_size)


EVAL_CROPS = (1, 12)


def multi_crop(image: tf.Tensor, image_size: int, resize_size: int = 0) -> tf.Tensor:
    """The 12 evaluation views of one image: float32 [12, S, S, 3] in [0, 255].

    Seed 000 reports 12-crop results without listing the crops; these are the usual ones: after
    resizing the shorter side to `resize_size`, the 4 corner and the centre S x S windows, plus the
    whole image resized to S x S (aspect ratio not kept) -- 6 views, in that order (top-left,
    top-right, bottom-left, bottom-right, centre, whole) -- followed by the horizontal flips of the
    same 6. Average the model's probabilities over the 12 to score the image.
    """
    image_size, resize_size = check_sizes(image_size, resize_size)
    resized = resize_shorter_side(image, resize_size)
    shape = tf.shape(resized)
    bottom, right = shape[0] - image_size, shape[1] - image_size
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    views = [resized[top:top + image_size, left:left + image_size, :] for top, left in offsets]
    whole = tf.image.resize(tf.cast(_as_rgb(image), tf.float32), [image_size, image_size], method="bilinear",
                            antialias=True)
    views.append(tf.clip_by_value(whole, 0.0, 255.0))
    views = tf.stack(views)
    views.set_shape([6, image_size, image_size, 3])
    return tf.concat([views, tf.reverse(views, axis=[2])], axis=0)
