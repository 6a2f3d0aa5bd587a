"""The embedded default dataset: a deterministic synthetic fine-grained image generator.

Everything in finegrain_tf can run offline on this dataset. It imitates what makes fine-grained
recognition hard (Cui's dissertation ch.1 and ch.6; the Chou-Ren thesis ch.1): classes that differ by
subtle cues, large intra-class nuisance, and a coarse-to-fine label hierarchy.

Label hierarchy
  * Super-classes differ by a coarse cue, the base shape family (star, polygon, flower, ring, cross,
    oval; beyond six super-classes the body hue band is a second coarse cue).
  * Classes inside a super-class differ only by subtle cues: a shape detail (number of star points,
    polygon sides, flower lobes, ring gaps, cross arms, or the oval's aspect ratio), the frequency of
    the stripe texture on the body, and a small hue shift of a central part (red vs orange, ...).
    Class names spell these out, e.g. ``star7_stripes4_orange``. With few classes per super-class
    (<= 8) the levels are spaced two apart (5 vs 7 points, 2 vs 4 stripes); with more, one apart.

Nuisance (independent per image): position, scale, in-plane rotation (pose), a cluttered background
(smooth colour field, a random grating and distractor blobs), lighting (gain, gradient, colour cast,
contrast) and sensor noise.

Determinism: each image is rendered from its own generator seeded by ``(seed, split, class, index)``,
so the same seed gives identical bytes, splits never share images, and the long-tailed train split of
``class_counts`` is a per-class prefix of the balanced one. numpy only; ~1 ms per 64x64 image.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Optional, Sequence

import numpy as np

from finegrain_tf.utils import checks

SPLITS = ("train", "val", "test")
MAX_ROTATION_DEG = 30.0  # in-plane pose range (+-); shapes have >= 3-fold symmetry except the oval
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Coarse cue: the base shape family of a super-class.
FAMILIES = ("star", "poly", "flower", "ring", "cross", "oval")
# Body hue bands used as a second coarse cue when there are more super-classes than families.
_BAND_NAMES = ("warm", "cool", "green", "violet", "earth", "sky", "rose", "lime")
# Subtle cue: the colour of the central part; neighbours in this list are close hues.
PART_COLOURS = (
        ("red", 0.0), ("orange", 28.0), ("yellow", 55.0), ("lime", 85.0), ("green", 120.0),
        ("teal", 160.0), ("cyan", 188.0), ("blue", 220.0), ("indigo", 250.0), ("purple", 280.0),
        ("magenta", 310.0), ("pink", 338.0))


@dataclasses.dataclass
class SyntheticData:
    """Generated splits. ``images[split]`` is uint8 [N, H, W, 3]; ``labels[split]`` int64 [N]."""
    images: dict
    labels: dict
    class_names: list
    superclass_of: np.ndarray  # int64 [C]: super-class of each class
    superclass_names: list
    class_attributes: list  # per class: dict(family, detail, stripes, colour, band)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self, split: str = "train") -> np.ndarray:
        return np.bincount(self.labels[split], minlength=self.num_classes).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Class structure


def _levels(k: int) -> int:
    """Smallest number of levels per subtle attribute so that levels**3 >= k (at least 2)."""
    n = 2
    while n ** 3 < k:
        n += 1
    return n


def class_structure(num_classes: int, num_superclasses: int):
    """Returns (class_attributes, superclass_of, superclass_names, class_names).

    Super-class s holds a contiguous block of classes; class j inside it takes the mixed-radix digits
    (detail, stripes, colour) of j, so any two classes of a super-class differ in at least one subtle
    attribute and the first few differ in exactly one.
    """
    checks.positive_int(num_classes, "num_classes")
    if not checks.positive_int(num_superclasses, "num_superclasses") <= num_classes:
        raise ValueError(f"num_superclasses must be in [1, num_classes={num_classes}], got {num_superclasses!r}")
    num_bands = -(-num_superclasses // len(FAMILIES))
    if num_bands > len(_BAND_NAMES):
        raise ValueError(f"num_superclasses={num_superclasses} exceeds the supported "
                         f"{len(FAMILIES) * len(_BAND_NAMES)}")
    sizes = [num_classes // num_superclasses + (s < num_classes % num_superclasses)
             for s in range(num_superclasses)]
    attributes, superclass_of, superclass_names, class_names = [], [], [], []
    for s, k in enumerate(sizes):
        family = FAMILIES[s % len(FAMILIES)]
        band = s // len(FAMILIES) if num_bands > 1 else -1
        sname = family if band < 0 else f"{family}_{_BAND_NAMES[band]}"
        superclass_names.append(sname)
        levels = _levels(k)
        step = 2 if levels == 2 else 1  # few classes: space the levels out (star5 vs star7)
        if levels > len(PART_COLOURS):
            raise ValueError(f"{k} classes in one super-class is too many (max {len(PART_COLOURS) ** 3}); "
                             f"raise num_superclasses (got {num_superclasses})")
        for j in range(k):
            d, f, c = j % levels, (j // levels) % levels, j // (levels * levels)
            attr = dict(family=family, detail=d * step, stripes=2 + f * step, colour=c, band=band,
                        superclass=s)
            attributes.append(attr)
            superclass_of.append(s)
            class_names.append(_class_name(attr))
    return attributes, np.asarray(superclass_of, np.int64), superclass_names, class_names


def _detail_value(family: str, d: int):
    """The shape-detail parameter of a family at level d (and its printable form)."""
    if family == "star":
        return 5 + d, f"{5 + d}"  # points
    if family == "poly":
        return 4 + d, f"{4 + d}"  # sides
    if family == "flower":
        return 3 + d, f"{3 + d}"  # lobes
    if family == "ring":
        return 1 + d, f"{1 + d}"  # gaps
    if family == "cross":
        return 3 + d, f"{3 + d}"  # arms
    aspect = 1.45 + 0.3 * d  # oval aspect ratio
    return aspect, f"{int(round(aspect * 10))}"


def _class_name(attr: dict) -> str:
    band = "" if attr["band"] < 0 else f"_{_BAND_NAMES[attr['band']]}"
    return (f"{attr['family']}{_detail_value(attr['family'], attr['detail'])[1]}{band}"
            f"_stripes{attr['stripes']}_{PART_COLOURS[attr['colour']][0]}")


# --------------------------------------------------------------------------------------------------
# Rendering


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """h in degrees, s and v in [0, 1] -> rgb float [3]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    i = int(h) % 6
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][i]
    return np.asarray(rgb) + (v - c)


def _soft(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside mask from a signed distance (positive inside), edge `width` wide."""
    return np.clip(signed_distance / width + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _grid(size: int):
    coords = ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v: rows (y), u: columns (x)
    lowres = 5
    # Bilinear upsampling matrix [size, lowres] for the smooth background field.
    pos = (np.arange(size) + 0.5) / size * (lowres - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, lowres - 2)
    frac = pos - lo
    interp = np.zeros((size, lowres))
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    return u, v, interp.astype(np.float32), coords


def _paste_blob(img: np.ndarray, coords: np.ndarray, bx: float, by: float, radius: float,
                squash: float, square: bool, colour: np.ndarray, px: float) -> None:
    """Alpha-blends a disc (or rectangle) of `colour` into `img` in place, inside its bounding box."""
    size = coords.shape[0]
    half = radius / min(squash, 1.0) if square else radius
    c0, c1 = np.searchsorted(coords, [bx - radius - px, bx + radius + px])
    r0, r1 = np.searchsorted(coords, [by - half - px, by + half + px])
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, size), min(r1, size)
    if c1 <= c0 or r1 <= r0:
        return
    du, dv = coords[None, c0:c1] - bx, coords[r0:r1, None] - by
    if square:
        dist = np.maximum(np.abs(du), np.abs(dv) * squash)
    else:
        dist = np.sqrt(du * du + dv * dv)
    alpha = _soft(radius - dist, px)[..., None]
    window = img[r0:r1, c0:c1]
    window += alpha * (colour.astype(np.float32) - window)


def _shape_alpha(family: str, detail: float, rho: np.ndarray, phi: np.ndarray, xo: np.ndarray,
                 yo: np.ndarray, edge: float) -> np.ndarray:
    """Coverage of the shape in object coordinates (unit radius); `edge` is one pixel in these units."""
    if family == "star":
        n = detail
        tri = np.abs(np.mod(phi * n / (2 * np.pi), 1.0) - 0.5) * 2.0  # 1 at the tips, 0 between
        return _soft(0.5 + 0.5 * tri - rho, edge)
    if family == "poly":
        n = detail
        sector = np.mod(phi, 2 * np.pi / n) - np.pi / n
        radius = np.cos(np.pi / n) / np.cos(sector)
        return _soft(radius - rho, edge)
    if family == "flower":
        return _soft(0.74 + 0.26 * np.cos(detail * phi) - rho, edge)
    if family == "ring":
        n = detail
        ring = _soft(1.0 - rho, edge) * _soft(rho - 0.55, edge)
        rel = (np.mod(phi * n / (2 * np.pi) + 0.5, 1.0) - 0.5) * 2 * np.pi / n  # angle to nearest gap
        return ring * _soft(np.abs(np.sin(rel)) * rho - 0.16, edge) + _soft(0.4 - rho, edge)
    if family == "cross":
        n = detail
        rel = (np.mod(phi * n / (2 * np.pi) + 0.5, 1.0) - 0.5) * 2 * np.pi / n  # angle to nearest arm
        perp, along = rho * np.abs(np.sin(rel)), rho * np.cos(rel)
        arms = _soft(0.2 - perp, edge) * _soft(1.0 - along, edge)
        return np.maximum(arms, _soft(0.4 - rho, edge))
    # oval: aspect ratio `detail`, long axis along the object x axis
    return _soft(1.0 - np.hypot(xo, yo * detail), edge)


def _render(rng: np.random.Generator, attr: dict, size: int) -> np.ndarray:
    """Renders one image of the class described by `attr` as uint8 [size, size, 3]."""
    u, v, interp, coords = _grid(size)
    px = 2.0 / size  # one pixel in image units ([-1, 1] spans the image)

    # Background: a smooth random colour field, a faint random grating and distractor blobs.
    grey = rng.uniform(0.2, 0.8, size=(1, interp.shape[1], interp.shape[1]))
    tint = rng.uniform(-0.12, 0.12, size=(3, interp.shape[1], interp.shape[1]))
    low = (grey + tint).astype(np.float32)
    img = np.ascontiguousarray((interp @ low @ interp.T).transpose(1, 2, 0))
    ang, freq = rng.uniform(0, np.pi), rng.uniform(2.0, 9.0)
    grating = np.sin(np.float32(np.pi * freq) * (np.float32(np.cos(ang)) * u + np.float32(np.sin(ang)) * v)
                     + np.float32(rng.uniform(0, 2 * np.pi)))
    img *= (1.0 - np.float32(rng.uniform(0.0, 0.15)) * (0.5 + 0.5 * grating))[..., None]
    for _ in range(rng.integers(0, 5)):
        bx, by = rng.uniform(-1, 1, size=2)
        br = rng.uniform(0.05, 0.16)
        colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.7), rng.uniform(0.3, 0.9))
        square, squash = rng.random() < 0.5, rng.uniform(0.3, 1.0)
        _paste_blob(img, coords, bx, by, br, squash, square, colour, px)

    # Object pose: scale, position, rotation.
    r = rng.uniform(0.55, 0.8)
    cx, cy = rng.uniform(-(1.0 - r), 1.0 - r, size=2)
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    dx, dy = (u - cx) / r, (v - cy) / r
    ct, st = math.cos(theta), math.sin(theta)
    xo, yo = ct * dx + st * dy, -st * dx + ct * dy
    rho = np.hypot(xo, yo)
    phi = np.arctan2(yo, xo)
    edge = px / r

    family = attr["family"]
    alpha = _shape_alpha(family, _detail_value(family, attr["detail"])[0], rho, phi, xo, yo, edge)

    # Body colour: random hue (nuisance), or a hue band when the band is a super-class cue.
    if attr["band"] < 0:
        hue = rng.uniform(0, 360)
    else:
        hue = attr["band"] * 360.0 / len(_BAND_NAMES) + rng.uniform(-20, 20)
    body = _hsv_to_rgb(hue, rng.uniform(0.4, 0.85), rng.uniform(0.7, 1.0))
    # Stripe texture: `stripes` periods across the object's diameter, rotating with the object.
    wave = np.tanh(3.0 * np.sin(np.pi * attr["stripes"] * xo + rng.uniform(-0.4, 0.4)))
    shade = 1.0 - rng.uniform(0.5, 0.7) * (0.5 + 0.5 * wave)
    obj = body[None, None, :] * shade[..., None]
    # Central part with a dark outline; its hue is the colour cue.
    part_hue = PART_COLOURS[attr["colour"]][1] + rng.uniform(-5, 5)
    part = _hsv_to_rgb(part_hue, rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0))
    outline = _soft(0.38 - rho, edge)
    inner = _soft(0.3 - rho, edge)
    obj = obj * (1 - outline[..., None]) + 0.08 * outline[..., None]
    obj = obj * (1 - inner[..., None]) + part * inner[..., None]
    img = img * (1 - alpha[..., None]) + obj * alpha[..., None]

    # Occasional small occluder in front of the object.
    if rng.random() < 0.3:
        ox, oy = cx + rng.uniform(-r, r), cy + rng.uniform(-r, r)
        radius = rng.uniform(0.05, 0.12)
        colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.9))
        _paste_blob(img, coords, ox, oy, radius, 1.0, False, colour, px)

    # Lighting: gain, linear gradient, colour cast, contrast; then sensor noise.
    gdir = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0, 0.35) * (math.cos(gdir) * u + math.sin(gdir) * v)
    img *= (np.float32(rng.uniform(0.6, 1.25)) * gradient)[..., None]
    img *= rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    mean = img.mean()
    contrast = np.float32(rng.uniform(0.7, 1.2))
    noise = rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.04))
    img = (img - mean) * contrast + (mean + noise)
    img *= 255.0
    img += 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


def _check_count(name: str, value) -> int:
    return checks.non_negative_int(value, name)


def generate(num_classes: int = 20, num_superclasses: int = 4, train_per_class: int = 60,
             val_per_class: int = 10, test_per_class: int = 20, image_size: int = 64, seed: int = 0,
             class_counts: Optional[Sequence[int]] = None) -> SyntheticData:
    """Generates the train/val/test splits of the synthetic fine-grained dataset.

    Args:
      num_classes, num_superclasses: C classes in S super-classes (contiguous blocks of classes).
      train_per_class, val_per_class, test_per_class: images per class in each split.
      image_size: side of the square images.
      seed: the same seed gives identical bytes.
      class_counts: optional per-class train counts (length C) making the train split long-tailed
        directly (e.g. from the exponential profile of Cui ch.5); overrides `train_per_class`.

    Returns:
      SyntheticData; images are ordered by class within each split.
    """
    attributes, superclass_of, superclass_names, class_names = class_structure(num_classes,
                                                                               num_superclasses)
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    per_class = {"train": [_check_count("train_per_class", train_per_class)] * num_classes,
                 "val": [_check_count("val_per_class", val_per_class)] * num_classes,
                 "test": [_check_count("test_per_class", test_per_class)] * num_classes}
    if class_counts is not None:
        counts = list(class_counts)
        if len(counts) != num_classes:
            raise ValueError(f"class_counts has {len(counts)} entries, expected num_classes={num_classes}")
        per_class["train"] = [_check_count("class_counts entry", c) for c in counts]
    images, labels = {}, {}
    for split in SPLITS:
        counts = per_class[split]
        out = np.zeros((sum(counts), image_size, image_size, 3), np.uint8)
        lab = np.zeros((sum(counts),), np.int64)
        k = 0
        for c, n in enumerate(counts):
            for i in range(n):
                rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], c, i])
                out[k] = _render(rng, attributes[c], int(image_size))
                lab[k] = c
                k += 1
        images[split], labels[split] = out, lab
    return SyntheticData(images=images, labels=labels, class_names=class_names,
                         superclass_of=superclass_of, superclass_names=superclass_names,
                         class_attributes=attributes)


@functools.lru_cache(maxsize=4)
def _generate_cached(num_classes, num_superclasses, train_per_class, val_per_class, test_per_class,
                     image_size, seed) -> SyntheticData:
    data = generate(num_classes, num_superclasses, train_per_class, val_per_class, test_per_class,
                    image_size, seed)
    for arr in list(data.images.values()) + list(data.labels.values()):
        arr.setflags(write=False)  # shared by every caller of the cache
    return data


def generate_from_config(cfg) -> SyntheticData:
    """`generate` for a `finegrain_tf.train.config.SyntheticConfig`, cached in-process (read-only arrays)."""
    return _generate_cached(cfg.num_classes, cfg.num_superclasses, cfg.train_per_class,
                            cfg.val_per_class, cfg.test_per_class, cfg.image_size, cfg.seed)


def make_dataset(cfg, split: str):
    """tf.data.Dataset of (uint8 image [H, W, 3], int64 label) for one split of the configured data."""
    import tensorflow as tf

    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {list(SPLITS)}")
    data = generate_from_config(cfg)
    return tf.data.Dataset.from_tensor_slices((data.images[split], data.labels[split]))


def write_image_folder(data: SyntheticData, root: str, splits: Sequence[str] = ("train", "val", "test"),
                       format: str = "jpeg", quality: int = 95) -> str:
    """Writes ``root/<split>/<class_name>/<index>.jpg`` (or .png) for each split; returns `root`."""
    import tensorflow as tf

    if format not in ("jpeg", "png"):
        raise ValueError(f"format must be 'jpeg' or 'png', got {format!r}")
    ext = ".jpg" if format == "jpeg" else ".png"
    for split in splits:
        if split not in data.images:
            raise ValueError(f"split {split!r} not in the data (have {sorted(data.images)})")
        for name in data.class_names:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for index, (image, label) in enumerate(zip(data.images[split], data.labels[split])):
            if format == "jpeg":
                encoded = tf.io.encode_jpeg(image, quality=quality).numpy()
            else:
                encoded = tf.io.encode_png(image).numpy()
            path = os.path.join(root, split, data.class_names[int(label)], f"{index:06d}{ext}")
            with open(path, "wb") as f:
                f.write(encoded)
    return root
