"""Bounded image decoding: read the header with stock ops, refuse oversized images before decoding.

A few hundred bytes of PNG can declare 1 x 120000 pixels (or 6000 x 6000), and decoding allocates
height x width x channels bytes before a single pixel is checked. Every decode of untrusted bytes in
this package goes through here: the training loaders, the export's serving signatures and the
bootstrap scorer. The header is read with stock TF ops only (no py_function), so the same code runs
inside tf.data and inside an exported SavedModel under TF Serving's session loader:

  JPEG  `tf.image.extract_jpeg_shape` (libjpeg reads the markers up to SOF, no pixel decoding)
  PNG   IHDR width/height: bytes 16..23, big-endian uint32
  GIF   the largest frame extent over the image descriptors (TF sizes its canvas by the frames, not
        by the logical screen) and the number of frames (TF decodes them all), by walking the blocks
  BMP   BITMAPINFOHEADER width/height: bytes 18..25, little-endian int32 (negative height = top-down)

Formats are recognised by the same magic bytes `tf.io.decode_image` uses, so the header read here is
the one the decoder will act on. Anything else (including WebP and JPEG XL, which TF's DecodeImage op
also reads) is refused: its size cannot be checked here.

API
  DecodeLimits(max_pixels=40_000_000, max_aspect_ratio=50.0)  validated, frozen
  image_shape(encoded) -> int64 [3] (frames, height, width); frames > 1 only for animated GIFs;
      (-1, -1, -1) for an unknown format or a truncated PNG/GIF/BMP header (a truncated JPEG header
      raises InvalidArgumentError from libjpeg)
  within_limits(shape, limits) -> bool scalar (pixels counted over all frames)
  decode_image(encoded, limits=DEFAULT_LIMITS) -> uint8 [H, W, 3]; raises
      tf.errors.InvalidArgumentError naming the size before anything is decoded
  decode_or_flag(encoded, limits) -> (uint8 [H, W, 3], ok): never raises for a size; an oversized
      image comes back as a 1x1 black placeholder with ok=False (loaders filter and count it);
      unrecognisable or corrupt bytes still raise

For the serving export (inside a `tf.function` signature, e.g. under `tf.map_fn` over a batch of
encoded strings): call `decode_image(encoded, limits)`. It raises InvalidArgumentError, which TF
Serving returns as gRPC INVALID_ARGUMENT / REST 400 with the message, e.g.
  "image of 120000x1 pixels (width x height) exceeds the decode limits: at most 40000000 pixels and
   an aspect ratio of 1:50"
Take the limits as export-time options (`DecodeLimits(...)`); the check costs a few scalar ops and
happens before any allocation proportional to the image size. Resize after decoding (memory is then
bounded by max_pixels x 3 bytes per image).

The GIF walk is a `tf.while_loop` over blocks and sub-blocks (one step, ~50 us on CPU, per <= 255
bytes of an ordinary GIF: ~0.25 s for a 1.4 MB 1000x1000 GIF); it stops early once the frames seen are
certainly too many, and a GIF needing more than `_GIF_MAX_WALK_STEPS` steps (~12 MB of ordinary GIF,
or fewer bytes cut into tiny sub-blocks) is refused as unreadable, which bounds the walk to ~2 s.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from finegrain_tf.utils import checks

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT_RATIO = 50.0

# Magic bytes exactly as tf.io.decode_image checks them (tensorflow/python/ops/image_ops_impl.py).
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PN"
_GIF_MAGIC = b"GIF"
_BMP_MAGIC = b"BM"
_HEADER_PAD = b"\x00" * 32  # lets fixed-offset reads run past the end of a truncated header
_GIF_MAX_WALK_PIXELS = 2 ** 40  # stop counting GIF frames once they are certainly too large
_GIF_MAX_WALK_STEPS = 50_000  # blocks + sub-blocks walked at most: ~12 MB of an ordinary GIF, ~2 s


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Largest image accepted for decoding: total pixels and long side / short side."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO

    def __post_init__(self):
        checks.positive_int(self.max_pixels, "max_pixels")
        checks.in_range(self.max_aspect_ratio, "max_aspect_ratio", 1.0, None)

    def describe(self) -> str:
        return (f"at most {self.max_pixels} pixels and an aspect ratio of "
                f"1:{self.max_aspect_ratio:g}")


DEFAULT_LIMITS = DecodeLimits()


def _unknown() -> tf.Tensor:
    return tf.constant([-1, -1, -1], tf.int64)


def _field(padded: tf.Tensor, offset: int, length: int, dtype, little_endian: bool) -> tf.Tensor:
    """One unsigned header field as int64 (read from the zero-padded bytes)."""
    raw = tf.io.decode_raw(tf.strings.substr(padded, offset, length), dtype, little_endian=little_endian)
    value = tf.cast(raw[0], tf.int64)
    if dtype == tf.int32:  # PNG stores uint32: undo the int32 wrap-around
        value = tf.where(value < 0, value + 2 ** 32, value)
    return value


@tf.function  # the block walk is a tf.while_loop: a graph loop even when called eagerly
def _gif_shape(encoded: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """(frames, height, width) of a GIF as TF decodes it, or (-1, -1, -1) when the block walk fails.

    TF's GIF decoder sizes its canvas by the largest frame (not by the logical screen) and decodes
    every frame, so the memory is frames x height x width x 3: walking the block structure
    (extensions and image data are chains of length-prefixed sub-blocks) counts the frames and takes
    the largest frame extent (offset + size, an upper bound of TF's canvas). The walk stops early
    once the frames seen are certainly too many.
    """
    data = tf.cast(tf.io.decode_raw(tf.strings.join([encoded, _HEADER_PAD]), tf.uint8), tf.int64)
    last = tf.cast(tf.size(data) - 1, tf.int64)
    length = tf.cast(length, tf.int64)

    def byte(pos):
        return tf.gather(data, tf.minimum(tf.cast(pos, tf.int64), last))

    def u16(pos):
        return byte(pos) + 256 * byte(pos + 1)

    def table_size(flags):  # bytes of a global / local colour table
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)

    start = 13 + table_size(byte(10))
    zero = tf.constant(0, tf.int64)

    def cond(pos, in_blocks, frames, width, height, done):
        return tf.logical_not(done)

    def body(pos, in_blocks, frames, width, height, done):
        # Inside a sub-block chain: a 0 length ends it, otherwise skip length + 1 bytes.
        size = byte(pos)
        chain_pos = tf.where(size == 0, pos + 1, pos + 1 + size)
        # At a block start: 0x21 extension (label, then sub-blocks), 0x2C image descriptor (10 bytes,
        # local colour table, LZW code size, then sub-blocks), anything else (0x3B trailer) ends.
        code = byte(pos)
        is_ext, is_image = tf.equal(code, 0x21), tf.equal(code, 0x2C)
        image_pos = pos + 10 + table_size(byte(pos + 9)) + 1
        block_pos = tf.where(is_ext, pos + 2, image_pos)
        new_frames = frames + tf.cast(is_image, tf.int64)
        new_width = tf.where(is_image, tf.maximum(width, u16(pos + 1) + u16(pos + 5)), width)
        new_height = tf.where(is_image, tf.maximum(height, u16(pos + 3) + u16(pos + 7)), height)
        at_block = tf.logical_not(in_blocks)
        next_pos = tf.where(at_block, block_pos, chain_pos)
        next_in_blocks = tf.where(at_block, tf.logical_or(is_ext, is_image), size != 0)
        next_frames = tf.where(at_block, new_frames, frames)
        next_width = tf.where(at_block, new_width, width)
        next_height = tf.where(at_block, new_height, height)
        ended = tf.logical_and(at_block, tf.logical_not(tf.logical_or(is_ext, is_image)))
        too_big = next_frames * next_width * next_height > _GIF_MAX_WALK_PIXELS
        done = tf.logical_or(tf.logical_or(ended, too_big), next_pos >= length)
        return next_pos, next_in_blocks, next_frames, next_width, next_height, done

    _, _, frames, width, height, done = tf.while_loop(
        cond, body, (start, tf.constant(False), zero, zero, zero, start >= length),
        maximum_iterations=_GIF_MAX_WALK_STEPS)
    ok = tf.logical_and(tf.logical_and(length >= 13, frames > 0), done)
    return tf.where(ok, tf.stack([frames, height, width]), _unknown())


def _fixed_offset_shape(encoded: tf.Tensor) -> tf.Tensor:
    """(1, height, width) of a PNG or BMP header, (-1, -1, -1) otherwise; branch-free on 32 bytes."""
    length = tf.strings.length(encoded)
    head = tf.strings.join([tf.strings.substr(encoded, 0, 32), _HEADER_PAD])  # never the whole file
    one = tf.constant(1, tf.int64)
    png = tf.stack([one, _field(head, 20, 4, tf.int32, little_endian=False),
                    _field(head, 16, 4, tf.int32, little_endian=False)])
    raw = tf.io.decode_raw(tf.strings.substr(head, 18, 8), tf.int32, little_endian=True)
    bmp = tf.concat([[one], tf.abs(tf.cast(tf.stack([raw[1], raw[0]]), tf.int64))], 0)  # height < 0: top-down
    is_png = tf.logical_and(tf.equal(tf.strings.substr(encoded, 0, 3), _PNG_MAGIC), length >= 24)
    is_bmp = tf.logical_and(tf.equal(tf.strings.substr(encoded, 0, 2), _BMP_MAGIC), length >= 26)
    return tf.where(is_png, png, tf.where(is_bmp, bmp, _unknown()))


def _lazy_cond(pred: tf.Tensor, true_fn, false_fn) -> tf.Tensor:
    """`tf.cond` kept as a functional If op, so the branch not taken costs nothing.

    tf.data (and the graph optimizer) otherwise lower a cond to Switch/Merge, and every element then
    pays for the dead nodes of the branch not taken: measured in a tf.data map on 2 shared cores, the
    lowered conds of this module cost ~1.5 ms per JPEG each, more than decoding it (~1 ms), the kept
    If ops almost nothing. `_lower_using_switch_merge` is the attribute cond_v2 itself sets.
    """
    out = tf.cond(pred, true_fn, false_fn)
    if not tf.executing_eagerly():
        op = out.op
        while op.type not in ("If", "StatelessIf") and op.inputs:
            op = op.inputs[0].op
        if op.type in ("If", "StatelessIf"):
            op._set_attr("_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False))  # pylint: disable=protected-access
    return out


def image_shape(encoded: tf.Tensor) -> tf.Tensor:
    """(frames, height, width) int64 [3] of encoded JPEG/PNG/GIF/BMP bytes, read without decoding.

    frames is 1 except for GIFs (TF decodes all frames of an animation). (-1, -1, -1) for an
    unrecognised format or a PNG/GIF/BMP header cut short; a JPEG whose header is cut short raises
    InvalidArgumentError (libjpeg's own header parser).
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    magic3 = tf.strings.substr(encoded, 0, 3)

    def jpeg():
        height_width = tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)
        return tf.concat([tf.constant([1], tf.int64), height_width], 0)

    def not_jpeg():
        return _lazy_cond(tf.equal(magic3, _GIF_MAGIC), lambda: _gif_shape(encoded, tf.strings.length(encoded)),
                          lambda: _fixed_offset_shape(encoded))

    return _lazy_cond(tf.equal(magic3, _JPEG_MAGIC), jpeg, not_jpeg)


def within_limits(shape: tf.Tensor, limits: DecodeLimits = DEFAULT_LIMITS) -> tf.Tensor:
    """Whether (frames, height, width) is known, non-empty and within `limits` (bool scalar).

    The pixel limit counts every frame; the aspect limit applies to a frame.
    """
    shape = tf.cast(shape, tf.int64)
    frames, height, width = shape[0], shape[1], shape[2]
    known = tf.logical_and(frames > 0, tf.logical_and(height > 0, width > 0))
    pixels_ok = frames * height * width <= limits.max_pixels
    long_side = tf.cast(tf.maximum(height, width), tf.float64)
    short_side = tf.cast(tf.maximum(tf.minimum(height, width), 1), tf.float64)
    aspect_ok = long_side <= limits.max_aspect_ratio * short_side
    return tf.logical_and(known, tf.logical_and(pixels_ok, aspect_ok))


def _refusal(shape: tf.Tensor, limits: DecodeLimits) -> tf.Tensor:
    """The error text for a refused header (string scalar)."""
    unknown = tf.constant("not a decodable JPEG/PNG/GIF/BMP image (unrecognised format or a header cut "
                          "short)")
    size = tf.strings.format("image of {}x{} pixels (width x height)", [shape[2], shape[1]])
    frames = tf.where(shape[0] > 1, tf.strings.format(" x {} frames", [shape[0]]), "")
    too_large = tf.strings.join([size, frames, " exceeds the decode limits: " + limits.describe()])
    return tf.where(shape[0] < 0, unknown, too_large)


def _require(ok: tf.Tensor, shape: tf.Tensor, limits: DecodeLimits) -> tf.Tensor:
    """Raises InvalidArgumentError with the refusal message unless `ok`; the message (string
    formatting) is built only on the failing branch."""
    def fail():
        with tf.control_dependencies([tf.debugging.Assert(False, [_refusal(shape, limits)])]):
            return tf.constant(False)

    return _lazy_cond(ok, lambda: tf.constant(True), fail)


def _decode(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def decode_image(encoded: tf.Tensor, limits: DecodeLimits = DEFAULT_LIMITS) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF (first frame)/BMP bytes to uint8 [H, W, 3] after checking the header.

    Grayscale is replicated to three channels and alpha dropped.

    Raises:
      tf.errors.InvalidArgumentError: the header declares more than `limits.max_pixels` pixels or an
        aspect ratio beyond `limits.max_aspect_ratio` (message names width x height), the format is
        not recognised, or the bytes are corrupt. Nothing is decoded in the first two cases.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    shape = image_shape(encoded)
    with tf.control_dependencies([_require(within_limits(shape, limits), shape, limits)]):
        return _decode(tf.identity(encoded))


def decode_or_flag(encoded: tf.Tensor, limits: DecodeLimits = DEFAULT_LIMITS):
    """(uint8 [H, W, 3] image, ok bool scalar): an oversized image gives a 1x1 placeholder, ok=False.

    For tf.data loaders that skip and count oversized images separately from broken ones: only a size
    refusal is flagged. Bytes that are not a recognisable image (unknown format, header cut short)
    or fail to decode raise InvalidArgumentError like `decode_image` (drop those with
    `ignore_errors` and count the gap, see `data.pipeline`).
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    shape = image_shape(encoded)
    with tf.control_dependencies([_require(shape[0] > 0, shape, limits)]):
        ok = within_limits(shape, limits)
    image = _lazy_cond(ok, lambda: _decode(encoded), lambda: tf.zeros([1, 1, 3], tf.uint8))
    image.set_shape([None, None, 3])
    return image, ok
